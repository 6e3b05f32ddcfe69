// The register_*() functions, one per binding file, called by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace ecso_bindings {

void register_errors(pybind11::module_ & m);
void register_config(pybind11::module_ & m);
void register_model(pybind11::module_ & m);
void register_result(pybind11::module_ & m);
void register_cancel_token(pybind11::module_ & m);
void register_session(pybind11::module_ & m);

}  // namespace ecso_bindings
