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
    PyErr_SetString(cls.ptr(), e.what());
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
