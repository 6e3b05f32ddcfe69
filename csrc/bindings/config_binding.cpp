// Binds EcsoConfig (with SamplingConfig flattened into it) as ecso_edge.EcsoConfig. The
// defaults Python sees are the core's: nothing is repeated on the Python side.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <vector>

#include "bindings/registry.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/config.hpp"
#include "ecso/errors.hpp"

namespace py = pybind11;

namespace ecso_bindings {
namespace {

using ecso::EcsoConfig;

// "an int in 0..1000", from the range validate() checks.
template <class T>
std::string int_in(const ecso::IntRange<T> & range) {
    return "an int in " + std::to_string(range.min) + ".." + std::to_string(range.max);
}

// Every field, with what it takes: a wrong type or an int out of the C++ type's range gets that
// sentence instead of pybind11's list of C++ signatures. tests/test_option_errors.py checks that
// the list is complete, tests/test_config_fields.py that each int's range is the one validate()
// enforces.
struct Field {
    const char * name;
    std::string takes;
};
namespace r = ecso::ranges;
const Field kFields[] = {
    {"judge_template", "a str"}, {"caption_template", "a str"}, {"text_only_template", "a str"},
    {"system_prompt", "a str or None"}, {"chat_template", "a str or None"}, {"image_placement", "'before' or 'after'"},
    {"response_cut_chars", int_in(r::kResponseCutChars)}, {"verdict_rule", "'exact', 'prefix' or 'logits'"},
    {"reuse_kv", "True or False"}, {"shadow_judge", "True or False"}, {"verdict_override", "None, True or False"},
    {"temperature", "a float >= 0"}, {"top_p", "a float in (0, 1]"}, {"top_k", int_in(r::kTopK)},
    {"seed", "None or " + int_in(r::kSeed)}, {"ignore_eos", "True or False"},
    {"logit_bias", "a dict {token id (int): bias (float)}"},
    {"max_tokens_answer", "None or " + int_in(r::kStepTokens)}, {"max_tokens_judge", int_in(r::kStepTokens)},
    {"max_tokens_caption", "None or " + int_in(r::kStepTokens)},
    {"max_tokens_text_only", "None or " + int_in(r::kStepTokens)},
    {"max_image_pixels", int_in(r::kMaxImagePixels)},
    {"judge_text_only", "True or False"}, {"keep_conversations", int_in(r::kKeepConversations)},
    {"conversation_cache_mib", int_in(r::kConversationCacheMib)}, {"reuse_answer_cells", "True or False"},
    {"judge_layout", "'paper' or 'continue'"}, {"judge_mode", "'final' or 'incremental'"},
    {"judge_continue_template", "a str"}, {"judge_chunk_tokens", int_in(r::kJudgeChunkTokens)},
    {"judge_first_chunk_tokens", int_in(r::kJudgeChunkTokens)},
    {"judge_chunk_sentences", "True or False"}, {"judge_check_threshold", "a float in (0, 1)"},
};

py::dict to_dict(const py::object & self) {
    py::dict d;
    for (const Field & f : kFields) {
        d[f.name] = self.attr(f.name);
    }
    return d;
}

void object_setattr(const py::object & self, const py::str & name, const py::handle & value) {
    // a handle kept for the process's life: a static py::object would be released after the
    // interpreter has gone
    static const py::handle setattr =
        py::object(py::module_::import("builtins").attr("object").attr("__setattr__")).release();
    setattr(self, name, value);
}

void apply(py::object & self, const py::dict & kwargs) {
    for (const auto & item : kwargs) {
        const std::string key = py::cast<std::string>(item.first);
        const Field * field = nullptr;
        for (const Field & f : kFields) {
            if (key == f.name) {
                field = &f;
            }
        }
        if (field == nullptr) {
            throw py::type_error("EcsoConfig has no field '" + key + "'");
        }
        try {
            // object.__setattr__: the class's own __setattr__ (below) comes back here
            object_setattr(self, py::str(key), item.second);
        } catch (py::error_already_set & e) {
            if (!e.matches(PyExc_TypeError)) {
                throw;
            }
            std::string given = py::cast<std::string>(py::repr(item.second));
            if (given.size() > 60) {
                given = given.substr(0, 57) + "...";
            }
            throw py::type_error("EcsoConfig field '" + key + "' takes " + field->takes + ", not " + given + " (" +
                                 py::cast<std::string>(py::type::of(item.second).attr("__name__")) + ")");
        }
    }
}

std::vector<std::string> config_field_names() {
    std::vector<std::string> names;
    for (const Field & f : kFields) {
        names.emplace_back(f.name);
    }
    return names;
}

std::string placement_name(ecso::ImagePlacement p) {
    return p == ecso::ImagePlacement::BeforeText ? "before" : "after";
}

}  // namespace

void register_config(py::module_ & m) {
    py::class_<EcsoConfig> cls(m, "EcsoConfig", R"pbdoc(
The ECSO preset. Defaults are the paper's evaluation preset: its prompt wording, the judge
quoting the first 1927 characters of the answer, the exact "yes"/"yes." verdict rule, greedy
decoding, and KV-cache reuse on.

    cfg = EcsoConfig(reuse_kv=False, verdict_override=True)
    cfg2 = cfg.replace(temperature=0.7, seed=3)
)pbdoc");
    cls.def(py::init([](const py::kwargs & kwargs) {
                auto * cfg = new EcsoConfig();
                py::object self = py::cast(cfg, py::return_value_policy::reference);
                apply(self, kwargs);
                cfg->validate();
                return std::unique_ptr<EcsoConfig>(cfg);
            }),
            "Keyword arguments set fields; anything unknown is a TypeError, anything invalid a ConfigError.");
    cls.def_static("paper_preset", &EcsoConfig::paper_preset,
                   "The paper's exact prompts on any model: the defaults with LLaVA-1.5's system line set.");
    cls.def(
        "system_prompt_for",
        [](const EcsoConfig & c, const ecso::Model & model) { return ecso::ChatFrame::build(model, c).system_prompt; },
        py::arg("model"), "The system message this config gives `model`'s steps ('' for none).");
    cls.def_readwrite("judge_template", &EcsoConfig::judge_template, "Step 2 prompt; placeholders {query}, {response}.")
        .def_readwrite("caption_template", &EcsoConfig::caption_template, "Step 3 prompt; placeholder {query}.")
        .def_readwrite("text_only_template", &EcsoConfig::text_only_template,
                       "Step 4 prompt; placeholders {query}, {caption}.")
        .def_readwrite("system_prompt", &EcsoConfig::system_prompt,
                       "System message of every step. None: the family's default (LLaVA-1.5's line on a LLaVA "
                       "projector, mlp or mlp_norm, framed by vicuna; no system message elsewhere); '' for none.")
        .def_property(
            "chat_template",
            [](const EcsoConfig & c) -> std::optional<std::string> {
                if (c.chat_template.empty()) {
                    return std::nullopt;
                }
                return c.chat_template;
            },
            [](EcsoConfig & c, const std::optional<std::string> & v) { c.chat_template = v.value_or(""); },
            "None: the model's own template (vicuna when the GGUF has none); or a llama.cpp built-in name.")
        .def_property(
            "image_placement", [](const EcsoConfig & c) { return placement_name(c.image_placement); },
            [](EcsoConfig & c, const std::string & v) {
                if (v == "before") {
                    c.image_placement = ecso::ImagePlacement::BeforeText;
                } else if (v == "after") {
                    c.image_placement = ecso::ImagePlacement::AfterText;
                } else {
                    throw ecso::ConfigError("image_placement must be 'before' or 'after' (got '" + v + "')");
                }
            },
            "'before' (the paper: image, newline, text) or 'after' (the authors' demo).")
        .def_readwrite("response_cut_chars", &EcsoConfig::response_cut_chars,
                       "The judge quotes this many characters of the first answer.")
        .def_property(
            "verdict_rule",
            [](const EcsoConfig & c) {
                switch (c.verdict_rule) {
                    case ecso::VerdictRule::Exact: return "exact";
                    case ecso::VerdictRule::Prefix: return "prefix";
                    case ecso::VerdictRule::Logits: return "logits";
                }
                return "exact";
            },
            [](EcsoConfig & c, const std::string & v) {
                if (v == "exact") {
                    c.verdict_rule = ecso::VerdictRule::Exact;
                } else if (v == "prefix") {
                    c.verdict_rule = ecso::VerdictRule::Prefix;
                } else if (v == "logits") {
                    c.verdict_rule = ecso::VerdictRule::Logits;
                } else {
                    throw ecso::ConfigError("verdict_rule must be 'exact', 'prefix' or 'logits' (got '" + v + "')");
                }
            },
            "'exact' (the paper: output is 'yes' or 'yes.'), 'prefix' (starts with 'yes'), or 'logits' "
            "(P(yes) > P(no) from the judge's first-token logits; no text is generated).")
        .def_readwrite("reuse_kv", &EcsoConfig::reuse_kv,
                       "Reuse the KV prefix across steps (False: every step from an empty cache).")
        .def_readwrite("shadow_judge", &EcsoConfig::shadow_judge,
                       "Feed the answer into the judge while step 1 decodes (beyond the paper; the judge reads the "
                       "generated tokens rather than the re-tokenized answer). Needs reuse_kv and image_placement "
                       "'before'; ignored otherwise.")
        .def_readwrite("verdict_override", &EcsoConfig::verdict_override,
                       "None, or True/False to force the unsafe/safe branch (the judge still runs).")
        .def_property(
            "temperature", [](const EcsoConfig & c) { return c.sampling.temperature; },
            [](EcsoConfig & c, float v) { c.sampling.temperature = v; }, "0 (default) is greedy.")
        .def_property(
            "top_p", [](const EcsoConfig & c) { return c.sampling.top_p; },
            [](EcsoConfig & c, float v) { c.sampling.top_p = v; })
        .def_property(
            "top_k", [](const EcsoConfig & c) { return c.sampling.top_k; },
            [](EcsoConfig & c, int32_t v) { c.sampling.top_k = v; }, "0 disables top-k.")
        .def_property(
            "seed", [](const EcsoConfig & c) { return c.sampling.seed; },
            [](EcsoConfig & c, std::optional<uint32_t> v) { c.sampling.seed = v; },
            "Sampling seed; None uses the model's seed.")
        .def_property(
            "ignore_eos", [](const EcsoConfig & c) { return c.sampling.ignore_eos; },
            [](EcsoConfig & c, bool v) { c.sampling.ignore_eos = v; },
            "Ban end-of-generation tokens so each step generates exactly its token limit.")
        .def_property(
            "logit_bias",
            [](const EcsoConfig & c) {
                std::map<int32_t, float> out(c.sampling.logit_bias.begin(), c.sampling.logit_bias.end());
                return out;
            },
            [](EcsoConfig & c, const std::map<int32_t, float> & v) {
                c.sampling.logit_bias.assign(v.begin(), v.end());
            },
            "{token id: added logit}, applied in every step.")
        .def_readwrite("max_tokens_answer", &EcsoConfig::max_tokens_answer, "Step 1 limit; None: run's max_tokens.")
        .def_readwrite("max_tokens_judge", &EcsoConfig::max_tokens_judge, "Step 2 limit.")
        .def_readwrite("max_tokens_caption", &EcsoConfig::max_tokens_caption, "Step 3 limit; None: run's max_tokens.")
        .def_readwrite("max_tokens_text_only", &EcsoConfig::max_tokens_text_only,
                       "Step 4 limit; None: run's max_tokens.")
        .def_readwrite("max_image_pixels", &EcsoConfig::max_image_pixels, "Larger images raise ImageError.")
        .def_readwrite("judge_text_only", &EcsoConfig::judge_text_only,
                       "chat(): judge conversations that hold no image too (default: answered directly).")
        .def_readwrite("keep_conversations", &EcsoConfig::keep_conversations,
                       "chat(): how many conversations' KV cells the session keeps between calls (0: none).")
        .def_readwrite("conversation_cache_mib", &EcsoConfig::conversation_cache_mib,
                       "chat(): the host memory (MiB) the kept conversations and their image encodings may use.")
        .def_readwrite("reuse_answer_cells", &EcsoConfig::reuse_answer_cells,
                       "chat(): reuse the previous answer's generated cells too (bit-identical to a cold evaluation "
                       "only where one-token decodes equal batched prefills; docs/conversations.md).")
        .def_property(
            "judge_layout",
            [](const EcsoConfig & c) { return c.judge_layout == ecso::JudgeLayout::Paper ? "paper" : "continue"; },
            [](EcsoConfig & c, const std::string & v) {
                if (v == "paper") {
                    c.judge_layout = ecso::JudgeLayout::Paper;
                } else if (v == "continue") {
                    c.judge_layout = ecso::JudgeLayout::Continue;
                } else {
                    throw ecso::ConfigError("judge_layout must be 'paper' or 'continue' (got '" + v + "')");
                }
            },
            "'paper' (a fresh prompt quoting the answer) or 'continue' (beyond the paper: the question is a new "
            "user turn after step 1's conversation, reusing all of its KV cells; docs/judge-modes.md).")
        .def_property(
            "judge_mode",
            [](const EcsoConfig & c) { return c.judge_mode == ecso::JudgeMode::Final ? "final" : "incremental"; },
            [](EcsoConfig & c, const std::string & v) {
                if (v == "final") {
                    c.judge_mode = ecso::JudgeMode::Final;
                } else if (v == "incremental") {
                    c.judge_mode = ecso::JudgeMode::Incremental;
                } else {
                    throw ecso::ConfigError("judge_mode must be 'final' or 'incremental' (got '" + v + "')");
                }
            },
            "'final' (the paper: judge the whole answer) or 'incremental' (beyond the paper: also check at chunk "
            "boundaries with the continue layout and the logits rule, stream text judged safe at once, stop at "
            "the first unsafe check; docs/judge-modes.md).")
        .def_readwrite("judge_continue_template", &EcsoConfig::judge_continue_template,
                       "The continue layout's question ({query} optional).")
        .def_readwrite("judge_chunk_tokens", &EcsoConfig::judge_chunk_tokens,
                       "Incremental judging: check after every this many answer tokens (0: not by count).")
        .def_readwrite("judge_first_chunk_tokens", &EcsoConfig::judge_first_chunk_tokens,
                       "Incremental judging: the first check comes after this many answer tokens, each later one "
                       "judge_chunk_tokens after the check before it (0: judge_chunk_tokens).")
        .def_readwrite("judge_chunk_sentences", &EcsoConfig::judge_chunk_sentences,
                       "Incremental judging: also check after a token that ends a sentence.")
        .def_readwrite("judge_check_threshold", &EcsoConfig::judge_check_threshold,
                       "Incremental judging: a check calls the answer so far unsafe when its P(yes) exceeds this.");

    cls.def(
        "__setattr__",
        [](py::object self, const py::str & name, const py::object & value) {
            py::dict one;
            one[name] = value;
            apply(self, one);
        },
        "Sets a field; a wrong type is a TypeError saying what the field takes (validated when a Session uses it).");
    cls.def("to_dict", [](const py::object & self) { return to_dict(self); }, "The fields as a plain dict.");
    cls.def_static("field_names", &config_field_names, "Every field's name, in order.");
    cls.def(
        "replace",
        [](const py::object & self, const py::kwargs & kwargs) {
            EcsoConfig copy = py::cast<EcsoConfig>(self);
            py::object other = py::cast(copy);
            apply(other, kwargs);
            py::cast<const EcsoConfig &>(other).validate();
            return other;
        },
        "A copy with the given fields changed.");
    cls.def("__eq__", [](const py::object & self, const py::object & other) {
        if (!py::isinstance<EcsoConfig>(other)) {
            return false;
        }
        return to_dict(self).equal(to_dict(other));
    });
    cls.def("__repr__", [](const py::object & self) {
        std::string out = "EcsoConfig(";
        bool first = true;
        for (const auto & item : to_dict(self)) {
            out += (first ? "" : ", ") + py::cast<std::string>(py::str(item.first)) + "=" +
                   py::cast<std::string>(py::repr(item.second));
            first = false;
        }
        return out + ")";
    });
    cls.def(py::pickle([](const py::object & self) { return to_dict(self); },
                       [](const py::dict & d) {
                           auto cfg = std::make_unique<EcsoConfig>();
                           py::object self = py::cast(cfg.get(), py::return_value_policy::reference);
                           apply(self, d);
                           return cfg;
                       }));
}

}  // namespace ecso_bindings
