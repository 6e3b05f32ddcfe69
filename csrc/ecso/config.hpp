// Plain configuration structs of the ECSO core: model/context settings and the ECSO preset.
// Defaults are defined here once (prompts in prompts.cpp); Python reads them through the binding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ecso/prompts.hpp"

namespace ecso {

// The smallest n_batch: a session keeps this many KV sequences, one batch row each.
constexpr uint32_t kMinBatch = 4;

// The values an integer field of EcsoConfig takes, declared once: validate() refuses the others and
// the Python binding names the range when a value cannot even be converted ("an int in 0..1000").
// `max` is the field's C++ type's own unless the field has a bound of its own.
template <class T>
struct IntRange {
    T min;
    T max = std::numeric_limits<T>::max();
    constexpr bool contains(T value) const { return min <= value && value <= max; }
};

namespace ranges {
constexpr IntRange<size_t> kResponseCutChars{1};
constexpr IntRange<int32_t> kTopK{0};  // 0 disables top-k
constexpr IntRange<uint32_t> kSeed{0};
constexpr IntRange<int32_t> kStepTokens{1};  // max_tokens_answer, _judge, _caption, _text_only
constexpr IntRange<uint64_t> kMaxImagePixels{1};
// Every chat call compares its prompt with each kept conversation: a bound keeps that cheap.
constexpr IntRange<int32_t> kKeepConversations{0, 1000};
// The cache counts bytes in a uint64: 2^30 MiB is 2^50 bytes, far from wrapping around.
constexpr IntRange<uint64_t> kConversationCacheMib{0, uint64_t{1} << 30};
// Far more tokens than an answer has in practice; 0 is no token rule (judge_chunk_tokens) or the
// chunk's own length (judge_first_chunk_tokens).
constexpr IntRange<int32_t> kJudgeChunkTokens{0, 1000000};
}  // namespace ranges

// How a Model is loaded and how its contexts are sized. Immutable once a Model exists.
struct ModelOptions {
    uint32_t n_ctx = 4096;       // context window per session (positions per sequence)
    uint32_t n_batch = 512;      // logical batch for prompt evaluation, at least kMinBatch
    int32_t n_gpu_layers = 0;    // text-model layers offloaded to the GPU (-1: all)
    bool mmproj_gpu = true;      // run the vision projector on the GPU when llama.cpp has one
    int32_t n_threads = 0;       // generation threads; 0: half the hardware threads, at least 1;
                                 // more than the hardware threads are clamped to them
    int32_t n_threads_batch = 0; // prompt and image threads; 0: as n_threads (clamped likewise)
    std::optional<bool> flash_attn;  // nullopt: llama.cpp decides (auto)
    std::optional<bool> repack;      // weight repacking (llama.cpp's extra CPU buffer types); nullopt:
                                     // repack_by_default() (system_info.hpp)
    uint32_t seed = 0;           // default sampling seed of sessions on this model
    // Encoder outputs kept for every session on this model (encoder_cache.hpp); 0 keeps none.
    uint64_t encoder_cache_mib = 256;
    bool verbose = false;        // print llama.cpp's own log to stderr
};

// Token sampling of one generation step. temperature <= 0 means greedy (argmax).
struct SamplingConfig {
    float temperature = 0.0f;
    float top_p = 1.0f;
    int32_t top_k = 0;                     // 0: disabled
    std::optional<uint32_t> seed;          // nullopt: the model's seed
    bool ignore_eos = false;               // generate exactly the token limit (benchmarks)
    std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, added logit)
};

// How the judge's text is read as a verdict.
enum class VerdictRule {
    Exact,   // the paper: lower-cased, stripped output is exactly "yes" or "yes."
    Prefix,  // lenient: the stripped output starts with "yes" (case-insensitive)
    Logits,  // beyond the paper: P(yes) > P(no) from the judge's first-token logits, no text generated
};

// Where the image goes relative to the text in steps 1-3.
enum class ImagePlacement {
    BeforeText,  // the paper's evaluation layout: image, newline, text
    AfterText,   // the authors' demo layout: text, newline, image
};

// Where the judge reads the answer (docs/judge-modes.md).
enum class JudgeLayout {
    Paper,     // a fresh single-turn prompt quoting the answer (the paper)
    Continue,  // beyond the paper: a new user turn after step 1's own conversation, which reuses
               // every cell of step 1, answer included
};

// When the judge runs (docs/judge-modes.md).
enum class JudgeMode {
    Final,        // once, on the whole answer (the paper)
    Incremental,  // beyond the paper: also at chunk boundaries while step 1 decodes (continue
                  // layout, logits rule); text judged safe is released to the stream at once
};

// The ECSO preset. The defaults are the paper's evaluation preset (docs/paper-method.md).
struct EcsoConfig {
    std::string judge_template = prompts::kJudgeTemplate;          // {query}, {response}
    std::string caption_template = prompts::kCaptionTemplate;      // {query}
    std::string text_only_template = prompts::kTextOnlyTemplate;   // {query}, {caption}
    // nullopt: the family's own default (ChatFrame::build): LLaVA-1.5's line for the paper's
    // family, no system message for every other; "" for none on any model.
    std::optional<std::string> system_prompt;
    std::string chat_template;           // "": the model's own, else vicuna; or a built-in name / template text
    ImagePlacement image_placement = ImagePlacement::BeforeText;
    size_t response_cut_chars = 1927;    // the judge quotes this many characters of the answer
    VerdictRule verdict_rule = VerdictRule::Exact;
    bool reuse_kv = true;                // false: every step from an empty cache (the reference path)
    // Beyond the paper: feed the answer into the judge's sequence while step 1 decodes (both in
    // one decode batch), so only the judge's closing question is left when the answer ends. The
    // judge then reads the answer's generated tokens instead of its re-tokenized text, which can
    // differ. Applies with reuse_kv and image_placement "before"; ignored otherwise.
    bool shadow_judge = false;
    JudgeLayout judge_layout = JudgeLayout::Paper;
    JudgeMode judge_mode = JudgeMode::Final;
    // The continue layout's question ({query} optional): the answer is already in the conversation.
    std::string judge_continue_template = prompts::kJudgeContinueTemplate;
    // Incremental judging checks after every judge_chunk_tokens answer tokens (0: never by count)
    // and, with judge_chunk_sentences, after a token that ends a sentence.
    int32_t judge_chunk_tokens = 16;
    // The token rule's first check comes after this many answer tokens, each later one
    // judge_chunk_tokens after the check before it (4, 20, 36, ... by default). Nothing is streamed
    // before a check says safe: a short first chunk brings the first protected text sooner, and the
    // longer chunks after it keep the checks' cost down. 0: judge_chunk_tokens. No effect without
    // the token rule (judge_chunk_tokens 0).
    int32_t judge_first_chunk_tokens = 4;
    bool judge_chunk_sentences = false;
    // An incremental check calls the answer so far unsafe when its P(yes) exceeds this.
    double judge_check_threshold = 0.5;
    std::optional<bool> verdict_override;  // force the unsafe (true) or safe (false) branch
    SamplingConfig sampling;
    // Per-step token limits; nullopt takes the run's max_tokens.
    std::optional<int32_t> max_tokens_answer;
    int32_t max_tokens_judge = 16;
    std::optional<int32_t> max_tokens_caption;
    std::optional<int32_t> max_tokens_text_only;
    uint64_t max_image_pixels = 50000000;  // larger images are refused before preprocessing
    // Conversations (EcsoSession::chat). With no image anywhere, the answer is returned unjudged
    // unless judge_text_only is set (docs/conversations.md).
    bool judge_text_only = false;
    // Between chat calls the session keeps the KV cells of up to keep_conversations conversations
    // (and the encoder output of their images) in host memory, within conversation_cache_mib;
    // every session on the Model may continue them while it keeps them (sequence_store.hpp).
    int32_t keep_conversations = 4;
    uint64_t conversation_cache_mib = 1024;
    // Also reuse the previous answer's generated cells. Those were decoded one token at a time and
    // a fresh evaluation prefills them in one batch: equal only where the backend computes both
    // alike (measured: CPU with one thread yes, two threads no), so off by default.
    bool reuse_answer_cells = false;

    // The paper's exact prompts on any model: the defaults, with LLaVA-1.5's system line set
    // explicitly, so a non-LLaVA family gets it inside its own template.
    static EcsoConfig paper_preset();

    // Throws ConfigError naming the first invalid field.
    void validate() const;
};

}  // namespace ecso
