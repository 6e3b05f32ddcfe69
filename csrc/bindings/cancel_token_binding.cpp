// Binds ecso::CancelToken as ecso_edge._core.CancelToken (held by shared_ptr: a call keeps the
// token it was given alive, and so does whoever may cancel it later).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>

#include "bindings/registry.hpp"
#include "ecso/cancel_token.hpp"
#include "ecso/errors.hpp"

namespace py = pybind11;

namespace ecso_bindings {

void register_cancel_token(py::module_ & m) {
    py::class_<ecso::CancelToken, std::shared_ptr<ecso::CancelToken>>(m, "CancelToken", R"pbdoc(
The cancellation of one call: pass it as ``cancel=`` to Session.run/answer/judge/stream, and call
``cancel()`` from any thread, before or during that call. A cancel that lands before the call has
started makes it raise CancelledError at once; it never reaches another call.
)pbdoc")
        .def(py::init<>())
        .def("cancel", &ecso::CancelToken::cancel, "Cancel the call holding this token (from any thread).")
        .def_property_readonly("cancelled", &ecso::CancelToken::cancelled)
        .def(
            "wait",
            [](const ecso::CancelToken & token, std::optional<double> timeout) {
                if (timeout && !(*timeout >= 0.0 && std::isfinite(*timeout))) {
                    throw ecso::ConfigError("timeout must be a finite number of seconds >= 0, or None");
                }
                py::gil_scoped_release release;
                return token.wait(std::chrono::duration<double>(timeout.value_or(-1.0)));
            },
            py::arg("timeout") = py::none(),
            "Block (GIL released) until the token is cancelled or `timeout` seconds pass; True when cancelled.");
}

}  // namespace ecso_bindings
