// Maps each core exception class to its ecso_edge.errors class (defined in Python so they can
// also derive from ValueError / RuntimeError where that is what callers expect).
#include <pybind11/pybind11.h>

#include "bindings/registry.hpp"
#include "ecso/errors.hpp"

namespace py = pybind11;

namespace ecso_bindings {
namespace {

void raise_as(const char * name, const std::exception & e) {
    const py::object cls = py::module_::import("ecso_edge.errors").attr(name);
    // A message may quote bytes from a damaged file (a key name, llama.cpp's log): PyErr_SetString
    // would fail on invalid UTF-8 with a UnicodeDecodeError (found by the fuzz suite), so decode
    // with replacement characters.
    const std::string what = e.what();
    const py::object message = py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(what.data(), static_cast<Py_ssize_t>(what.size()), "replace"));
    PyErr_SetObject(cls.ptr(), message.ptr());
}

}  // namespace

void register_errors(py::module_ & /*m*/) {
    py::register_exception_translator([](std::exception_ptr p) {
        if (!p) {
            return;
        }
        try {
            std::rethrow_exception(p);
        } catch (const ecso::ModelLoadError & e) {
            raise_as("ModelLoadError", e);
        } catch (const ecso::ImageError & e) {
            raise_as("ImageError", e);
        } catch (const ecso::ContextOverflowError & e) {
            raise_as("ContextOverflowError", e);
        } catch (const ecso::CancelledError & e) {
            raise_as("CancelledError", e);
        } catch (const ecso::ConfigError & e) {
            raise_as("ConfigError", e);
        } catch (const ecso::Error & e) {
            raise_as("EcsoError", e);
        }
    });
}

}  // namespace ecso_bindings
