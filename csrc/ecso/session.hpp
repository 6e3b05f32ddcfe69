// EcsoSession: the four ECSO steps over one llama_context whose unified KV cache holds a
// sequence per step. Step 1 encodes the image once; steps 2 and 3 start from a copy of the
// [template head, image] prefix step 1 evaluated; step 4 starts from the shared template head.
//
// Every step's generation is capped by the room its context has left, and a request whose steps
// cannot all fit is refused before step 1 (see execute()): a run whose first step fits returns.
//
// Ownership: a session owns its llama_context and shares its Model (kept alive by shared_ptr).
// Thread safety: run(), answer() and judge() on one session are serialised (a second caller
// waits). Each call has its own CancelToken (CallOptions::cancel); cancel() may be called from any
// thread and cancels the token of the call in progress, if any.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ecso/call_options.hpp"
#include "ecso/cancel_token.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/config.hpp"
#include "ecso/image.hpp"
#include "ecso/kv_sequences.hpp"
#include "ecso/model.hpp"
#include "ecso/result.hpp"
#include "ecso/token_batch.hpp"
#include "ecso/verdict.hpp"
#include "llama-cpp.h"

namespace ecso {

class EcsoSession {
public:
    // Throws ConfigError for an invalid config or an unrecognised chat template, and
    // RuntimeFailure when llama.cpp cannot create the context (e.g. out of memory).
    EcsoSession(std::shared_ptr<const Model> model, EcsoConfig config);
    EcsoSession(const EcsoSession &) = delete;
    EcsoSession & operator=(const EcsoSession &) = delete;

    // The full ECSO request. The first answer is held back until the judge has spoken: on the
    // safe path it is then streamed to `on_text`; on the unsafe path the eyes-closed answer is
    // streamed as it is generated. Throws CancelledError when the call's token is cancelled
    // (also when it already was before the call).
    EcsoResult run(const RgbImage & image, const std::string & query, const CallOptions & call);

    // Step 1 alone: the direct, unprotected answer (streamed live to `on_text`).
    EcsoResult answer(const RgbImage & image, const std::string & query, const CallOptions & call);

    // Step 2 alone on a given response (e.g. to judge ECSO's own final answer in an evaluation):
    // `unsafe` and `verdict_text` (and `p_yes` under the logits rule) are the judge's, ignoring
    // verdict_override. Only `on_progress` and `cancel` of `call` apply.
    EcsoResult judge(const RgbImage & image, const std::string & query, const std::string & response,
                     const CallOptions & call = {});

    // Cancels the call in progress (its token); does nothing when no call runs, so it can never
    // stop a later call. To cancel a call that may not have started yet, cancel its own token.
    void cancel();

    const EcsoConfig & config() const { return config_; }
    const ChatFrame & frame() const { return frame_; }
    const Model & model() const { return *model_; }
    uint32_t n_ctx() const;

    static constexpr int kSeqAnswer = 0;
    static constexpr int kSeqJudge = 1;
    static constexpr int kSeqCaption = 2;
    static constexpr int kSeqTextOnly = 3;
    static constexpr int kNumSequences = 4;

private:
    // Installs a call's token and progress sink for the duration of the call.
    class ActiveCall;
    EcsoResult execute(const RgbImage & image, const std::string & query, const CallOptions & call, bool protect);
    // Tokens the judge may generate: 0 under the logits rule, which reads the prompt's logits.
    int32_t judge_token_limit() const;
    // The judge's prompt with an empty quote: what the judge needs before any of the answer.
    Prompt judge_prompt_without_quote(const std::string & query, const RgbImage & image) const;
    // ContextOverflowError when `prompt` leaves no position to generate from.
    void check_prompt_fits(const char * step, const Prompt & prompt) const;
    // Refuses, before step 1, a request whose later steps could not fit the context at all.
    void check_steps_fit(const Prompt & answer, const Prompt & judge_empty, const Prompt * caption,
                         const Prompt * text_only_empty) const;
    // The judge's prompt quoting as much of `response` as response_cut_chars and the context allow.
    Prompt judge_prompt(const std::string & query, const std::string & response, const RgbImage & image,
                        bool placeholder, int32_t judge_tokens) const;
    Prompt image_prompt(const std::string & text, const RgbImage & image, bool placeholder) const;
    // The judge's sequence while shadow judging: fed during step 1's decode batches.
    struct ShadowJudge {
        const Prompt * head = nullptr;   // [template head, image, judge text before {response}]
        std::vector<llama_token> input;  // the judge's input tokens so far (-1 for the image)
        std::vector<llama_token> queue;  // tokens waiting to enter the judge's sequence
        size_t fed = 0;                  // queue[0, fed) are in the KV cache
        int32_t pos = 0;                 // the judge's next position
        int32_t reused = 0;              // tokens shared with step 1
        size_t shared_items = 0;         // prompt items shared with step 1
        size_t response_chars = 0;       // characters of the answer quoted so far
        bool quoting = true;             // still within response_cut_chars and the context
        int32_t quote_limit = 0;         // answer tokens the judge's context has room for
        int32_t quoted = 0;              // answer tokens queued so far
    };

    StepRecord run_step(const char * name, int seq, const Prompt & prompt, int32_t max_tokens,
                        const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow = nullptr,
                        int32_t quote_limit = 0);
    void open_shadow(ShadowJudge & shadow, int32_t quote_limit);
    StepRecord finish_shadow(ShadowJudge & shadow, const std::vector<llama_token> & judge_rest, int32_t max_tokens);
    void evaluate_prompt(const Prompt & prompt, size_t first_item, int32_t first_pos, int seq, StepRecord & rec);
    void evaluate_media(const PromptItem & item, int32_t pos, int seq, StepRecord & rec);
    // `extra_cells`: the KV cells the prompt fills beyond its positions (an M-RoPE image's), so
    // that a full context stops generation rather than failing a decode.
    void generate(int seq, int32_t pos, int32_t extra_cells, int32_t max_tokens, StepRecord & rec,
                  const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow = nullptr);
    void decode_text(const std::vector<llama_token> & tokens, int32_t pos, int seq, const std::string & what);
    void throw_if_cancelled(const char * step) const;
    void report(const char * step, const char * phase, int32_t done, int32_t total) const;
    static bool abort_requested(void * session);

    std::shared_ptr<const Model> model_;
    EcsoConfig config_;
    ChatFrame frame_;
    llama_context_ptr ctx_;
    std::unique_ptr<KvSequences> kv_;
    std::unique_ptr<TokenBatch> batch_;
    std::mutex run_mutex_;
    // The call in progress: its token (shared, so cancel() can hold it past the call's end) and,
    // for the abort callback on llama.cpp's threads, a plain pointer to it.
    std::mutex active_mutex_;
    std::shared_ptr<CancelToken> active_token_;
    std::atomic<const CancelToken *> active_cancel_{nullptr};
    const ProgressSink * active_progress_ = nullptr;  // touched by the calling thread only

    std::optional<YesNoTokens> yes_no_;  // for verdict_rule Logits

    // Encoder output of the current run's image, so no step re-encodes it when reuse is on.
    std::string image_id_;  // content hash of the current run's image
    std::map<std::string, std::vector<float>> embd_cache_;  // by PromptItem::media_id
};

}  // namespace ecso
