// Binds ecso::EcsoSession as ecso_edge._core.Session: copies the pixels in, releases the GIL for
// the whole request, keeps Ctrl-C working, and forwards streamed text to a Python callable.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <exception>
#include <memory>

#include "bindings/interruptible.hpp"
#include "bindings/registry.hpp"
#include "ecso/errors.hpp"
#include "ecso/session.hpp"

namespace py = pybind11;

namespace ecso_bindings {
namespace {

ecso::RgbImage copy_pixels(const py::buffer & pixels, uint32_t width, uint32_t height) {
    const py::buffer_info info = pixels.request();
    const size_t n_bytes = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
    const bool contiguous = info.ndim <= 1 || info.strides.back() == info.itemsize;
    if (info.itemsize != 1 || !contiguous) {
        throw ecso::ImageError("pixels must be a contiguous buffer of uint8 RGB values");
    }
    ecso::RgbImage image;
    image.width = width;
    image.height = height;
    image.pixels.resize(n_bytes);
    if (n_bytes > 0) {
        std::memcpy(image.pixels.data(), info.ptr, n_bytes);
    }
    return image;
}

// Forwards streamed pieces to a Python callable from the thread running the request. A Python
// exception in the callable cancels the request and is re-raised to the caller afterwards.
class PythonSink {
public:
    PythonSink(py::object callback, ecso::EcsoSession & session) : callback_(std::move(callback)), session_(session) {}

    ecso::TextSink sink() {
        if (callback_.is_none()) {
            return {};
        }
        return [this](const std::string & piece) {
            py::gil_scoped_acquire gil;
            if (error_) {
                return;
            }
            try {
                callback_(py::str(piece));
            } catch (py::error_already_set &) {
                error_ = std::current_exception();
                session_.cancel();
            }
        };
    }

    void rethrow_if_failed() const {
        if (error_) {
            std::rethrow_exception(error_);
        }
    }

private:
    py::object callback_;
    ecso::EcsoSession & session_;
    std::exception_ptr error_;
};

enum class Mode { Protected, Direct };

ecso::EcsoResult request(ecso::EcsoSession & session, Mode mode, const py::buffer & pixels, uint32_t width,
                         uint32_t height, const std::string & query, int32_t max_tokens, const py::object & on_text) {
    const ecso::RgbImage image = copy_pixels(pixels, width, height);
    PythonSink sink(on_text, session);
    const ecso::TextSink text_sink = sink.sink();
    try {
        ecso::EcsoResult result = call_interruptibly(
            [&]() {
                return mode == Mode::Protected ? session.run(image, query, max_tokens, text_sink)
                                               : session.answer(image, query, max_tokens, text_sink);
            },
            [&session] { session.cancel(); });
        sink.rethrow_if_failed();
        return result;
    } catch (const ecso::CancelledError &) {
        sink.rethrow_if_failed();  // the callback's own exception explains the cancel
        throw;
    }
}

const char * const kRunDoc = R"pbdoc(
The ECSO request: answer, judge, and on the unsafe path caption and eyes-closed answer.
`pixels` is width*height*3 bytes of RGB. `on_text(piece)` receives the FINAL answer as it is
decided: the first answer is held back until the judge has spoken.
)pbdoc";

}  // namespace

void register_session(py::module_ & m) {
    py::class_<ecso::EcsoSession>(m, "Session", R"pbdoc(
An ECSO session over a Model: one context whose KV cache holds a sequence per step.
Calls on one session are serialised (a second thread waits); cancel() may come from any thread.
)pbdoc")
        .def(py::init([](std::shared_ptr<ecso::Model> model, const ecso::EcsoConfig & config) {
                 py::gil_scoped_release release;
                 return std::make_unique<ecso::EcsoSession>(std::move(model), config);
             }),
             py::arg("model"), py::arg("config"))
        .def(
            "run",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, int32_t max_tokens, const py::object & on_text) {
                return request(s, Mode::Protected, pixels, width, height, query, max_tokens, on_text);
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::kw_only(),
            py::arg("max_tokens"), py::arg("on_text") = py::none(), kRunDoc)
        .def(
            "answer",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, int32_t max_tokens, const py::object & on_text) {
                return request(s, Mode::Direct, pixels, width, height, query, max_tokens, on_text);
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::kw_only(),
            py::arg("max_tokens"), py::arg("on_text") = py::none(),
            "Step 1 alone: the direct answer, no protection; `on_text` streams it live.")
        .def(
            "judge",
            [](ecso::EcsoSession & s, const py::buffer & pixels, uint32_t width, uint32_t height,
               const std::string & query, const std::string & response) {
                const ecso::RgbImage image = copy_pixels(pixels, width, height);
                return call_interruptibly([&]() { return s.judge(image, query, response); },
                                          [&s] { s.cancel(); });
            },
            py::arg("pixels"), py::arg("width"), py::arg("height"), py::arg("query"), py::arg("response"),
            "Step 2 alone on a given response: the judge's verdict (verdict_override does not apply).")
        .def("cancel", &ecso::EcsoSession::cancel,
             "Stops the request in progress (from any thread); it raises CancelledError.")
        .def_property_readonly("config", [](const ecso::EcsoSession & s) { return s.config(); },
                               "A copy of the session's EcsoConfig.")
        .def_property_readonly("n_ctx", &ecso::EcsoSession::n_ctx)
        .def_property_readonly("chat_template_name", [](const ecso::EcsoSession & s) { return s.frame().template_name; })
        .def_property_readonly("prompt_head", [](const ecso::EcsoSession & s) { return s.frame().head; },
                               "The chat-template text before the user's message.")
        .def_property_readonly("prompt_tail", [](const ecso::EcsoSession & s) { return s.frame().tail; },
                               "The chat-template text after the user's message.");
}

}  // namespace ecso_bindings
