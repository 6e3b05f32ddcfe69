// Binds EcsoResult and StepRecord (read-only) and builds the stats dict users see.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/registry.hpp"
#include "ecso/result.hpp"

namespace py = pybind11;

namespace ecso_bindings {

py::dict step_dict(const ecso::StepRecord & s) {
    py::dict d;
    d["prompt_tokens"] = s.prompt_tokens;
    d["tokens_reused"] = s.tokens_reused;
    d["tokens_prefilled"] = s.tokens_prefilled;
    d["tokens_generated"] = s.tokens_generated;
    d["tokens_shadowed"] = s.tokens_shadowed;
    d["image_encodes"] = s.image_encodes;
    d["stop_reason"] = s.stop_reason;
    if (s.p_yes) {
        d["p_yes"] = *s.p_yes;
    }
    d["encode_seconds"] = s.encode_seconds;
    d["prefill_seconds"] = s.prefill_seconds;
    d["decode_seconds"] = s.decode_seconds;
    d["seconds"] = s.seconds;
    return d;
}

namespace {

py::dict stats(const ecso::EcsoResult & r) {
    int64_t encodes = 0, prefilled = 0, reused = 0, generated = 0;
    py::dict seconds;
    py::dict steps;
    for (const auto & s : r.steps) {
        encodes += s.image_encodes;
        prefilled += s.tokens_prefilled;
        reused += s.tokens_reused;
        generated += s.tokens_generated;
        seconds[py::str(s.name)] = s.seconds;
        steps[py::str(s.name)] = step_dict(s);
    }
    py::dict d;
    d["image_encodes"] = encodes;
    d["tokens_prefilled"] = prefilled;
    d["tokens_reused"] = reused;
    d["tokens_generated"] = generated;
    d["image_tokens"] = r.image_tokens;
    d["template_prefix_tokens"] = r.template_prefix_tokens;
    d["seconds"] = seconds;
    d["total_seconds"] = r.seconds;
    d["steps"] = steps;
    d["judge_model"] = r.judge_model;
    return d;
}

}  // namespace

void register_result(py::module_ & m) {
    py::class_<ecso::StepRecord>(m, "StepRecord", "One evaluated ECSO step.")
        .def_readonly("name", &ecso::StepRecord::name)
        .def_readonly("text", &ecso::StepRecord::text)
        .def_readonly("tokens", &ecso::StepRecord::tokens, "Generated token ids (end-of-generation excluded).")
        .def_readonly("stop_reason", &ecso::StepRecord::stop_reason,
                      "'eos', 'length', 'context', or 'judge' (an incremental check stopped the answer).")
        .def_readonly("p_yes", &ecso::StepRecord::p_yes,
                      "A judge step's P(yes) under the logits rule (each incremental check has one), else None.")
        .def_readonly("input_tokens", &ecso::StepRecord::input_tokens,
                      "The prompt's text token ids in order, -1 standing for each image.")
        .def_property_readonly("stats", &step_dict)
        .def("__repr__", [](const ecso::StepRecord & s) {
            return "StepRecord(name=" + py::repr(py::str(s.name)).cast<std::string>() +
                   ", text=" + py::repr(py::str(s.text)).cast<std::string>() + ")";
        });

    py::class_<ecso::EcsoResult>(m, "EcsoResult", "What one ECSO request returned.")
        .def_readonly("answer", &ecso::EcsoResult::answer, "What the user gets.")
        .def_readonly("initial_answer", &ecso::EcsoResult::initial_answer, "Step 1's answer, with the image.")
        .def_readonly("verdict_text", &ecso::EcsoResult::verdict_text, "The judge's raw output ('' for answer()).")
        .def_readonly("caption", &ecso::EcsoResult::caption, "Step 3's query-aware caption; None on the safe path.")
        .def_readonly("captions", &ecso::EcsoResult::captions,
                      "Step 3's caption of each image, in order of appearance; empty on the safe path.")
        .def_readonly("unsafe", &ecso::EcsoResult::unsafe, "The first answer was judged (or forced) harmful.")
        .def_readonly("verdict_forced", &ecso::EcsoResult::verdict_forced)
        .def_readonly("judged_unsafe", &ecso::EcsoResult::judged_unsafe,
                      "What the judge itself decided, under the configured verdict rule (equals unsafe unless "
                      "verdict_override forced the branch).")
        .def_readonly("judged", &ecso::EcsoResult::judged, "False for answer(): no judge ran.")
        .def_readonly("p_yes", &ecso::EcsoResult::p_yes, "The judge's P(yes) under verdict_rule 'logits', else None.")
        .def_readonly("judge_model", &ecso::EcsoResult::judge_model,
                      "Who judged step 2: 'self' (the vision model) or the guard model's file name.")
        .def_readonly("judge_parsed", &ecso::EcsoResult::judge_parsed,
                      "False when a guard's output was not in its format (it then counted as unsafe).")
        .def_readonly("judge_categories", &ecso::EcsoResult::judge_categories,
                      "The harm categories a guard model named (its format's codes or names), if any.")
        .def_readonly("steps", &ecso::EcsoResult::steps)
        .def_property_readonly("stats", &stats,
                               "image_encodes, tokens_prefilled, tokens_reused, tokens_generated, seconds per step, "
                               "per-step details under 'steps' (the judge's own tokens and time under 'judge'), "
                               "and judge_model.")
        .def("to_dict", [](const ecso::EcsoResult & r) {
            py::dict d;
            d["answer"] = r.answer;
            d["initial_answer"] = r.initial_answer;
            d["verdict_text"] = r.verdict_text;
            d["caption"] = r.caption;
            d["captions"] = r.captions;
            d["unsafe"] = r.unsafe;
            d["verdict_forced"] = r.verdict_forced;
            d["judged_unsafe"] = r.judged_unsafe;
            d["p_yes"] = r.p_yes;
            d["judge_model"] = r.judge_model;
            d["judge_parsed"] = r.judge_parsed;
            d["judge_categories"] = r.judge_categories;
            d["stats"] = stats(r);
            return d;
        }, "Texts, verdict and stats as JSON-ready values.")
        .def("__repr__", [](const ecso::EcsoResult & r) {
            return "EcsoResult(unsafe=" + std::string(r.unsafe ? "True" : "False") +
                   ", answer=" + py::repr(py::str(r.answer)).cast<std::string>() + ")";
        });
}

}  // namespace ecso_bindings
