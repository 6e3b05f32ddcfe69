// The register_*() functions, one per binding file, called by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <exception>

#include "ecso/result.hpp"

namespace ecso_bindings {

void register_errors(pybind11::module_ & m);
void register_config(pybind11::module_ & m);
void register_model(pybind11::module_ & m);
void register_text_model(pybind11::module_ & m);
void register_guard_judge(pybind11::module_ & m);
void register_result(pybind11::module_ & m);
void register_cancel_token(pybind11::module_ & m);
void register_session(pybind11::module_ & m);
void register_guard_formats(pybind11::module_ & m);

// A StepRecord's stats as the dict users see (result_binding.cpp).
pybind11::dict step_dict(const ecso::StepRecord & step);

// The Python exception object (ecso_edge.errors class, RuntimeError for others) for a core error,
// for APIs that hand errors back as values (run_many).
pybind11::object exception_object(const std::exception_ptr & error);

}  // namespace ecso_bindings
