// Binds ecso::GuardJudge as ecso_edge._core.GuardJudge: a guard model judging any answer, as the
// evaluation's guard metric does (the session's step 2 uses the same class).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/interruptible.hpp"
#include "bindings/registry.hpp"
#include "ecso/guard_judge.hpp"

namespace py = pybind11;

namespace ecso_bindings {

void register_guard_judge(py::module_ & m) {
    py::class_<ecso::GuardJudge>(m, "GuardJudge", R"pbdoc(
A guard model (TextModel) with its prompt format: judge(query, response) reads an answer.
Calls on one GuardJudge are serialised; each releases the GIL and can be cancelled.
)pbdoc")
        .def(py::init([](std::shared_ptr<ecso::TextModel> model, const std::string & format) {
                 py::gil_scoped_release release;
                 return std::make_unique<ecso::GuardJudge>(std::move(model), format);
             }),
             py::arg("model"), py::arg("format"))
        .def_property_readonly("format", [](const ecso::GuardJudge & g) { return g.format().name; })
        .def(
            "judge",
            [](ecso::GuardJudge & g, const std::string & query, const std::string & response,
               std::shared_ptr<ecso::CancelToken> cancel) {
                if (!cancel) {
                    cancel = std::make_shared<ecso::CancelToken>();
                }
                const ecso::GuardOutcome out = call_interruptibly(
                    [&] { return g.judge(query, response, cancel.get(), nullptr); }, [&] { cancel->cancel(); });
                py::dict d;
                d["unsafe"] = out.verdict.unsafe;
                d["categories"] = out.verdict.categories;
                d["raw"] = out.verdict.raw;
                d["text"] = out.record.text;
                d["tokens"] = out.record.tokens;
                d["stats"] = step_dict(out.record);
                return d;
            },
            py::arg("query"), py::arg("response"), py::arg("cancel") = nullptr,
            "The guard's verdict on `response` to `query`: unsafe (True/False, None when the output is not in "
            "the format), categories, raw output, and the step's tokens and stats.");
}

}  // namespace ecso_bindings
