// Runs a long core call with the GIL released, so other Python threads run meanwhile, while the
// main thread keeps serving Ctrl-C: the work moves to the call thread; a KeyboardInterrupt cancels
// the work and is re-raised once it stops.
//
// The main thread sleeps until something happens: the worker's end, or a signal, which Python's
// C-level handler reports through signal.set_wakeup_fd on a pipe of ours. It used to wake every
// 20 ms to poll; on 2 cores each wake-up took a core from llama.cpp's spinning threads (measured:
// the direct answer 2-5 % slower than on a plain thread; bench/RESULTS.md). Where another
// wake-up fd is already installed (an asyncio loop's), it is left alone and the main thread polls.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>

#include <pybind11/pybind11.h>

namespace ecso_bindings {

namespace py = pybind11;

inline bool on_main_thread() {
    // A plain integer: a static Python object would be released after the interpreter is gone.
    static const unsigned long main_ident =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    return PyThread_get_thread_ident() == main_ident;
}

// A non-blocking pipe. Shared by the caller and the job, so neither end closes while the other
// may still write (a closed fd's number can be reused by the next open()).
struct WakePipe {
    int fds[2] = {-1, -1};
    WakePipe() {
        if (pipe(fds) != 0) {
            fds[0] = fds[1] = -1;
            return;
        }
        for (int fd : fds) {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }
    ~WakePipe() {
        for (int fd : fds) {
            if (fd >= 0) {
                close(fd);
            }
        }
    }
    WakePipe(const WakePipe &) = delete;
    WakePipe & operator=(const WakePipe &) = delete;
    void notify() const {
        const char byte = 0;
        (void)!write(fds[1], &byte, 1);
    }
    // Sleeps until a byte arrives (the caller released the GIL), then drains the pipe.
    void wait() const {
        pollfd p{fds[0], POLLIN, 0};
        while (poll(&p, 1, -1) < 0 && errno == EINTR) {
        }
        char buf[64];
        while (read(fds[0], buf, sizeof buf) > 0) {
        }
    }
};

// Installs a WakePipe as Python's signal wake-up fd for one call (GIL held), unless another one
// is installed already: pipe() is then null and the caller polls.
class SignalWakeup {
public:
    SignalWakeup() {
        auto candidate = std::make_shared<WakePipe>();
        if (candidate->fds[1] < 0) {
            return;
        }
        py::module_ signal = py::module_::import("signal");
        const int old =
            signal.attr("set_wakeup_fd")(candidate->fds[1], py::arg("warn_on_full_buffer") = false).cast<int>();
        if (old != -1) {
            signal.attr("set_wakeup_fd")(old);  // someone else's: keep it
            return;
        }
        pipe_ = std::move(candidate);
    }
    ~SignalWakeup() {
        if (pipe_) {
            py::module_::import("signal").attr("set_wakeup_fd")(-1);
        }
    }
    SignalWakeup(const SignalWakeup &) = delete;
    SignalWakeup & operator=(const SignalWakeup &) = delete;

    const std::shared_ptr<WakePipe> & pipe() const { return pipe_; }

private:
    std::shared_ptr<WakePipe> pipe_;
};

// The one thread that runs the main thread's calls, for the life of the process. A new thread per
// call is also a new OpenMP thread team per call (llama.cpp's compute threads), started cold each
// time: measured, the direct answer's decode was 16 % slower (bench/RESULTS.md).
class CallThread {
public:
    static CallThread & instance() {
        // Never destroyed: it may still run at exit. A child made by fork() has no such thread
        // (threads do not survive fork), so it starts its own; the parent's copy is left behind.
        static const bool registered = pthread_atfork(nullptr, nullptr, [] { current() = nullptr; }) == 0;
        (void)registered;
        if (current() == nullptr) {
            current() = new CallThread();
        }
        return *current();
    }
    void submit(std::function<void()> job) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            jobs_.push_back(std::move(job));
        }
        ready_.notify_one();
    }

private:
    static CallThread *& current() {
        static CallThread * thread = nullptr;
        return thread;
    }
    CallThread() {
        std::thread([this] {
            for (;;) {
                std::function<void()> job;
                {
                    std::unique_lock<std::mutex> lock(mutex_);
                    ready_.wait(lock, [this] { return !jobs_.empty(); });
                    job = std::move(jobs_.front());
                    jobs_.pop_front();
                }
                job();
            }
        }).detach();
    }
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> jobs_;
};

// Call with the GIL held. `cancel` must be safe to call from this thread while `work` runs.
template <class Work>
auto call_interruptibly(Work work, const std::function<void()> & cancel) -> decltype(work()) {
    using Result = decltype(work());
    if (!on_main_thread()) {
        py::gil_scoped_release release;
        return work();
    }
    SignalWakeup wakeup;
    const std::shared_ptr<WakePipe> pipe = wakeup.pipe();
    auto promise = std::make_shared<std::promise<Result>>();
    std::future<Result> done = promise->get_future();
    // The job lets go of the pipe before this function returns, so its two descriptors are closed
    // when the call is over, not whenever the call thread gets to it (a caller counting its open
    // files saw them still open now and then).
    auto released = std::make_shared<std::promise<void>>();
    struct WaitReleased {
        std::future<void> f;
        ~WaitReleased() {
            py::gil_scoped_release release;
            f.wait();
        }
    } wait_released{released->get_future()};
    // `work` lives on this thread's stack: this function returns only once the job has set `done`.
    auto job = [&work, promise, pipe = std::shared_ptr<WakePipe>(pipe), released]() mutable {
        try {
            if constexpr (std::is_void_v<Result>) {
                work();
                promise->set_value();
            } else {
                promise->set_value(work());
            }
        } catch (...) {
            promise->set_exception(std::current_exception());
        }
        if (pipe) {  // after the future is ready: the main thread may wake and read it
            pipe->notify();
        }
        pipe.reset();
        released->set_value();
    };
    {
        py::gil_scoped_release release;
        CallThread::instance().submit(job);
    }
    for (;;) {
        bool ready = false;
        {
            py::gil_scoped_release release;
            if (pipe) {
                pipe->wait();
                ready = done.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
            } else {
                ready = done.wait_for(std::chrono::milliseconds(20)) == std::future_status::ready;
            }
        }
        if (ready) {
            break;
        }
        if (PyErr_CheckSignals() != 0) {
            // A signal handler raised (KeyboardInterrupt): stop the work, then re-raise it.
            py::error_already_set interrupt;
            cancel();
            {
                py::gil_scoped_release release;
                done.wait();
            }
            try {
                done.get();
            } catch (...) {
                // the core's CancelledError: the interrupt is what the caller should see
            }
            throw interrupt;
        }
    }
    return done.get();
}

}  // namespace ecso_bindings
