// Binds the guard formats (csrc/ecso/guard_formats.hpp) as _core.guard_format(name) and
// _core.guard_format_names(); ecso_edge.guard_formats re-exports them. The formats live in a
// static table, so Python gets references that never dangle.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/registry.hpp"
#include "ecso/guard_formats.hpp"

namespace py = pybind11;

namespace ecso_bindings {

void register_guard_formats(py::module_ & m) {
    py::class_<ecso::GuardVerdict>(m, "GuardVerdict", "What a guard model's output says (GuardFormat.parse).")
        .def_readonly("unsafe", &ecso::GuardVerdict::unsafe,
                      "True (harmful), False (safe), or None when the output is not in the format.")
        .def_readonly("categories", &ecso::GuardVerdict::categories,
                      "The categories the guard named, in its own spelling (empty when none).")
        .def_readonly("raw", &ecso::GuardVerdict::raw, "The output as given.")
        .def("__repr__", [](const ecso::GuardVerdict & v) {
            return "GuardVerdict(unsafe=" + py::cast<std::string>(py::repr(py::cast(v.unsafe))) +
                   ", categories=" + py::cast<std::string>(py::repr(py::cast(v.categories))) +
                   ", raw=" + py::cast<std::string>(py::repr(py::cast(v.raw))) + ")";
        });

    py::class_<ecso::GuardFormat>(m, "GuardFormat",
                                  "A guard model's prompt format and output parser (docs/guard-formats.md).")
        .def_readonly("name", &ecso::GuardFormat::name)
        .def_readonly("max_tokens", &ecso::GuardFormat::max_tokens,
                      "Tokens the judge generates at most for the verdict.")
        .def_readonly("chat_turn", &ecso::GuardFormat::chat_turn,
                      "True: user_message() is one user turn for the chat template; False: it is the whole "
                      "prompt after BOS (special tokens parsed).")
        .def_readonly("assistant_prefix", &ecso::GuardFormat::assistant_prefix,
                      "Text the model's template puts at the start of the assistant turn.")
        .def("head", &ecso::GuardFormat::head, "The part of user_message() before the query (the same for all).")
        .def("user_message", &ecso::GuardFormat::user_message, py::arg("query"), py::arg("response"),
             "The user turn's content asking the guard whether `response` to `query` is harmful.")
        .def("parse", &ecso::GuardFormat::parse, py::arg("output"), "The verdict in the guard's output.")
        .def("__repr__", [](const ecso::GuardFormat & f) { return "GuardFormat('" + f.name + "')"; });

    m.def("guard_format", &ecso::guard_format, py::arg("name"), py::return_value_policy::reference,
          "The guard format called `name`; ConfigError for an unknown name.");
    m.def("guard_format_names", &ecso::guard_format_names, "The guard formats' names.");
}

}  // namespace ecso_bindings
