// What one ECSO request returns: the texts of each step, the verdict, and measured statistics.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ecso {

// One evaluated step: its output and how its prompt reached the KV cache.
struct StepRecord {
    std::string name;            // "answer", "judge", "caption", "text_only"
    std::string text;            // the step's output, stripped, valid UTF-8
    std::vector<int32_t> tokens; // generated token ids (EOS excluded; llama_token is int32_t)
    std::string stop_reason;     // "eos", "length" or "context"
    int32_t prompt_tokens = 0;   // positions in the step's prompt (image tokens included)
    int32_t tokens_reused = 0;   // prompt positions copied from another sequence's KV cells
    int32_t tokens_prefilled = 0;  // prompt positions evaluated by this step
    int32_t tokens_generated = 0;
    int32_t tokens_shadowed = 0; // judge input evaluated inside step 1's decode batches (shadow judging)
    std::optional<double> p_yes;  // a judge step's P(yes) under the logits rule (incremental checks too)
    std::vector<int32_t> input_tokens;  // the prompt's text tokens, -1 standing for each image
    int32_t image_encodes = 0;   // times the vision encoder ran for this step
    double encode_seconds = 0.0;  // of which: vision encoder
    double prefill_seconds = 0.0;
    double decode_seconds = 0.0;
    double seconds = 0.0;        // wall time of the whole step
};

struct EcsoResult {
    std::string answer;          // what the user gets
    std::string initial_answer;  // step 1
    std::string verdict_text;    // step 2's raw text ("" when answer() ran step 1 only)
    std::optional<std::string> caption;  // step 3, only on the unsafe path (chat: step 4's hints)
    std::vector<std::string> captions;   // step 3 per image, in order of appearance (unsafe path)
    bool unsafe = false;         // the verdict (forced or judged) said harmful
    bool verdict_forced = false; // EcsoConfig::verdict_override decided the branch
    bool judged_unsafe = false;  // what the judge itself decided (equals `unsafe` unless forced)
    bool judged = false;         // false for answer(): no judge ran
    std::optional<double> p_yes;  // the judge's P(yes) under verdict_rule Logits
    std::string judge_model = "self";  // who judged: "self" (the vision model) or the guard's file name
    bool judge_parsed = true;     // a guard's output was in its format (else it counted as unsafe)
    std::vector<std::string> judge_categories;  // the harm categories a guard named, if any
    int32_t image_tokens = 0;    // positions the image occupies in the prompt
    int32_t template_prefix_tokens = 0;  // positions before the image (chat template head)
    std::vector<StepRecord> steps;
    double seconds = 0.0;
};

}  // namespace ecso
