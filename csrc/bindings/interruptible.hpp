// Runs a long core call with the GIL released, so other Python threads run meanwhile, while the
// main thread keeps serving Ctrl-C: the work moves to a worker thread and the main thread polls
// Python's signal handlers; a KeyboardInterrupt cancels the work and is re-raised once it stops.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <thread>

#include <pybind11/pybind11.h>

namespace ecso_bindings {

namespace py = pybind11;

inline bool on_main_thread() {
    // A plain integer: a static Python object would be released after the interpreter is gone.
    static const unsigned long main_ident =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    return PyThread_get_thread_ident() == main_ident;
}

// Call with the GIL held. `cancel` must be safe to call from this thread while `work` runs.
template <class Work>
auto call_interruptibly(Work work, const std::function<void()> & cancel) -> decltype(work()) {
    using Result = decltype(work());
    if (!on_main_thread()) {
        py::gil_scoped_release release;
        return work();
    }
    std::packaged_task<Result()> task(std::move(work));
    std::future<Result> done = task.get_future();
    std::thread worker;
    {
        py::gil_scoped_release release;
        worker = std::thread(std::move(task));
    }
    for (;;) {
        bool ready = false;
        {
            py::gil_scoped_release release;
            ready = done.wait_for(std::chrono::milliseconds(20)) == std::future_status::ready;
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
