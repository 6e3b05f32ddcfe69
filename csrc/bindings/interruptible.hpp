// Runs a long core call with the GIL released, so other Python threads run meanwhile, while the
// main thread keeps serving Ctrl-C: the work moves to a worker thread; a KeyboardInterrupt cancels
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
#include <unistd.h>

#include <chrono>
#include <functional>
#include <future>
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

// A non-blocking pipe installed as Python's signal wake-up fd for one call (GIL held).
class SignalWakeup {
public:
    SignalWakeup() {
        if (pipe(fds_) != 0) {
            fds_[0] = fds_[1] = -1;
            return;
        }
        for (int fd : fds_) {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        py::module_ signal = py::module_::import("signal");
        const int old = signal.attr("set_wakeup_fd")(fds_[1], py::arg("warn_on_full_buffer") = false).cast<int>();
        if (old != -1) {
            signal.attr("set_wakeup_fd")(old);  // someone else's: keep it, and poll instead
            close_pipe();
            return;
        }
        installed_ = true;
    }
    ~SignalWakeup() {
        if (installed_) {
            py::module_::import("signal").attr("set_wakeup_fd")(-1);
        }
        close_pipe();
    }
    SignalWakeup(const SignalWakeup &) = delete;
    SignalWakeup & operator=(const SignalWakeup &) = delete;

    bool installed() const { return installed_; }
    int write_fd() const { return fds_[1]; }
    // Sleeps until a byte arrives (GIL released by the caller), then drains the pipe.
    void wait() const {
        pollfd p{fds_[0], POLLIN, 0};
        while (poll(&p, 1, -1) < 0 && errno == EINTR) {
        }
        char buf[64];
        while (read(fds_[0], buf, sizeof buf) > 0) {
        }
    }

private:
    void close_pipe() {
        for (int & fd : fds_) {
            if (fd >= 0) {
                close(fd);
                fd = -1;
            }
        }
    }
    int fds_[2] = {-1, -1};
    bool installed_ = false;
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
    const int notify = wakeup.installed() ? wakeup.write_fd() : -1;
    std::promise<Result> promise;
    std::future<Result> done = promise.get_future();
    auto run = [&work, &promise, notify] {
        try {
            if constexpr (std::is_void_v<Result>) {
                work();
                promise.set_value();
            } else {
                promise.set_value(work());
            }
        } catch (...) {
            promise.set_exception(std::current_exception());
        }
        if (notify >= 0) {  // after the future is ready: the main thread may wake and read it
            const char byte = 0;
            (void)!write(notify, &byte, 1);
        }
    };
    std::thread worker;
    {
        py::gil_scoped_release release;
        worker = std::thread(run);
    }
    for (;;) {
        bool ready = false;
        {
            py::gil_scoped_release release;
            if (wakeup.installed()) {
                wakeup.wait();
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
                worker.join();
            }
            try {
                done.get();
            } catch (...) {
                // the core's CancelledError: the interrupt is what the caller should see
            }
            throw interrupt;
        }
    }
    {
        py::gil_scoped_release release;
        worker.join();
    }
    return done.get();
}

}  // namespace ecso_bindings
