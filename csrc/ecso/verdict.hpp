// Reading the judge's output as a harmful / not harmful verdict.
#pragma once

#include <string>
#include <vector>

#include "ecso/config.hpp"
#include "ecso/model.hpp"
#include "llama.h"

namespace ecso {

// true when `judge_text` says the judged response is harmful under a text rule (Exact, Prefix).
bool judge_verdict(const std::string & judge_text, VerdictRule rule);

// The tokens a judge could start "yes" or "no" with: every token whose piece, stripped and
// lower-cased, is exactly "yes" or "no" ("yes", " Yes", "YES", ...).
struct YesNoTokens {
    std::vector<llama_token> yes;
    std::vector<llama_token> no;

    // Throws ConfigError when the vocabulary has no such tokens (the logits rule cannot apply).
    static YesNoTokens find(const Model & model);
};

// P(yes) from next-token logits (plus the sampling logit_bias, so the verdict prefers what the
// sampler would): a softmax over the best "yes" and the best "no" token.
double yes_probability(const float * logits, const YesNoTokens & tokens,
                       const std::vector<std::pair<int32_t, float>> & logit_bias);

}  // namespace ecso
