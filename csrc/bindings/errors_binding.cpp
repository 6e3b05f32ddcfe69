// Maps each core exception class to its ecso_edge.errors class (defined in Python so they can
// also derive from ValueError / RuntimeError where that is what callers expect).
#include <pybind11/pybind11.h>

#include "bindings/registry.hpp"
#include "ecso/errors.hpp"

namespace py = pybind11;

namespace ecso_bindings {
namespace {

// The ecso_edge.errors class for a core exception, most derived first; null for any other.
const char * error_class(const std::exception_ptr & p, std::string & what) {
    try {
        std::rethrow_exception(p);
    } catch (const ecso::ModelLoadError & e) {
        what = e.what();
        return "ModelLoadError";
    } catch (const ecso::ImageError & e) {
        what = e.what();
        return "ImageError";
    } catch (const ecso::ContextOverflowError & e) {
        what = e.what();
        return "ContextOverflowError";
    } catch (const ecso::CancelledError & e) {
        what = e.what();
        return "CancelledError";
    } catch (const ecso::ConfigError & e) {
        what = e.what();
        return "ConfigError";
    } catch (const ecso::StateFileError & e) {
        what = e.what();
        return "StateFileError";
    } catch (const ecso::ResourceError & e) {
        what = e.what();
        return "ResourceError";
    } catch (const ecso::Error & e) {
        what = e.what();
        return "EcsoError";
    } catch (const std::exception & e) {
        what = e.what();
        return nullptr;
    } catch (...) {
        what = "unknown error";
        return nullptr;
    }
}

py::object message_of(const std::string & what) {
    // A message may quote bytes from a damaged file (a key name, llama.cpp's log): PyErr_SetString
    // would fail on invalid UTF-8 with a UnicodeDecodeError (found by the fuzz suite), so decode
    // with replacement characters.
    return py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(what.data(), static_cast<Py_ssize_t>(what.size()), "replace"));
}

}  // namespace

py::object exception_object(const std::exception_ptr & error) {
    std::string what;
    const char * name = error_class(error, what);
    const py::object cls = name ? py::module_::import("ecso_edge.errors").attr(name)
                                : py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
    return cls(message_of(what));
}

void register_errors(py::module_ & /*m*/) {
    py::register_exception_translator([](std::exception_ptr p) {
        if (!p) {
            return;
        }
        std::string what;
        const char * name = error_class(p, what);
        if (name == nullptr) {
            std::rethrow_exception(p);  // pybind11's own translation (std exceptions)
        }
        const py::object cls = py::module_::import("ecso_edge.errors").attr(name);
        PyErr_SetObject(cls.ptr(), message_of(what).ptr());
    });
}

}  // namespace ecso_bindings
