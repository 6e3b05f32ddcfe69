// Validation of EcsoConfig values (the defaults and integer ranges live in config.hpp, the
// prompts in prompts.cpp).
#include "ecso/config.hpp"

#include <cmath>
#include <limits>

#include "ecso/errors.hpp"

namespace ecso {
namespace {

void require_step_tokens(const std::optional<int32_t> & v, const char * name) {
    if (v && !ranges::kStepTokens.contains(*v)) {
        throw ConfigError(std::string(name) + " must be at least " + std::to_string(ranges::kStepTokens.min) +
                          " (got " + std::to_string(*v) + ")");
    }
}

// "NAME must be from MIN (WHAT MIN MEANS) to MAX (got VALUE)".
void require_from_to(const IntRange<int32_t> & range, int32_t value, const char * name, const char * min_means) {
    if (!range.contains(value)) {
        throw ConfigError(std::string(name) + " must be from " + std::to_string(range.min) + " (" + min_means +
                          ") to " + std::to_string(range.max) + " (got " + std::to_string(value) + ")");
    }
}

}  // namespace

EcsoConfig EcsoConfig::paper_preset() {
    EcsoConfig c;
    c.system_prompt = prompts::kLlavaSystemPrompt;
    return c;
}

void EcsoConfig::validate() const {
    prompts::require_placeholders(judge_template, {"response"}, "judge_template");
    prompts::require_placeholders(caption_template, {"query"}, "caption_template");
    prompts::require_placeholders(text_only_template, {"caption"}, "text_only_template");
    if (!ranges::kResponseCutChars.contains(response_cut_chars)) {
        throw ConfigError("response_cut_chars must be at least " + std::to_string(ranges::kResponseCutChars.min) +
                          " (got " + std::to_string(response_cut_chars) + ")");
    }
    if (!(sampling.temperature >= 0.0f && std::isfinite(sampling.temperature))) {
        throw ConfigError("temperature must be a finite number >= 0 (0 is greedy; got " +
                          std::to_string(sampling.temperature) + ")");
    }
    for (const auto & [token, bias] : sampling.logit_bias) {
        if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity()) {
            // +inf makes every sampled distribution NaN (inf - inf); -inf is the documented ban
            throw ConfigError("logit_bias of token " + std::to_string(token) + " is " + (std::isnan(bias) ? "NaN" : "+inf") +
                              "; use a finite bias, or -inf to ban a token");
        }
    }
    if (!(sampling.top_p > 0.0f && sampling.top_p <= 1.0f)) {
        throw ConfigError("top_p must be in (0, 1]");
    }
    if (!ranges::kTopK.contains(sampling.top_k)) {
        throw ConfigError("top_k must be >= " + std::to_string(ranges::kTopK.min) + " (0 disables it)");
    }
    require_step_tokens(max_tokens_answer, "max_tokens_answer");
    require_step_tokens(max_tokens_judge, "max_tokens_judge");
    require_step_tokens(max_tokens_caption, "max_tokens_caption");
    require_step_tokens(max_tokens_text_only, "max_tokens_text_only");
    if (!ranges::kMaxImagePixels.contains(max_image_pixels)) {
        throw ConfigError("max_image_pixels must be at least " + std::to_string(ranges::kMaxImagePixels.min));
    }
    require_from_to(ranges::kKeepConversations, keep_conversations, "keep_conversations", "keep none");
    if (judge_continue_template.empty()) {
        throw ConfigError("judge_continue_template is empty: the continue layout needs a question");
    }
    require_from_to(ranges::kJudgeChunkTokens, judge_chunk_tokens, "judge_chunk_tokens", "no token rule");
    require_from_to(ranges::kJudgeChunkTokens, judge_first_chunk_tokens, "judge_first_chunk_tokens",
                    "as judge_chunk_tokens");
    if (!(judge_check_threshold > 0.0 && judge_check_threshold < 1.0)) {
        throw ConfigError("judge_check_threshold must be between 0 and 1, exclusive (got " +
                          std::to_string(judge_check_threshold) + ")");
    }
    if (judge_mode == JudgeMode::Incremental && judge_chunk_tokens == 0 && !judge_chunk_sentences) {
        throw ConfigError("judge_mode 'incremental' needs a chunk rule: set judge_chunk_tokens >= 1 or "
                          "judge_chunk_sentences=True");
    }
    if (!ranges::kConversationCacheMib.contains(conversation_cache_mib)) {
        throw ConfigError("conversation_cache_mib must be at most " + std::to_string(ranges::kConversationCacheMib.max) +
                          " (got " + std::to_string(conversation_cache_mib) + ")");
    }
}

}  // namespace ecso
