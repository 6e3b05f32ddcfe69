// DecodingEngine: what every request plan runs on. It owns the llama_context, whose unified KV
// cache holds a sequence per step, and evaluates a step's prompt from the longest reusable prefix
// another sequence holds (media chunks through the embedding cache), generates with the sampler,
// feeds the shadow judge beside step 1, and serves the call in progress (its cancel token, its
// progress sink). The plans (single_turn_plan, conversation_plan) say which steps run in which
// order. The engine knows ECSO's steps by their names and sequence numbers (kSeq*, which size its
// cell pool), with one exception: shadow judging (ShadowJudge, open_shadow, finish_shadow) lives
// here, because it feeds the judge's sequence inside step 1's own decode batches and quotes each
// answer token as generation samples it, and so needs the batch and the token loop themselves.
//
// Where the context lives: an engine either owns its llama_context (a session with one lane:
// every call on the context is direct) or is one lane of a BatchScheduler, whose context it shares
// with the other lanes (its sequences offset, its token batches merged with theirs, its solo work
// run on the scheduler's thread). The steps' code is the same either way.
//
// Not thread-safe: one request at a time per engine (EcsoSession hands out engines); only
// cancel() may come from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ecso/batch_scheduler.hpp"
#include "ecso/call_options.hpp"
#include "ecso/cancel_token.hpp"
#include "ecso/config.hpp"
#include "ecso/kv_sequences.hpp"
#include "ecso/model.hpp"
#include "ecso/prompt.hpp"
#include "ecso/result.hpp"
#include "ecso/sampling.hpp"
#include "ecso/token_batch.hpp"
#include "ecso/verdict.hpp"
#include "llama-cpp.h"

namespace ecso {

class DecodingEngine {
public:
    // Throws ResourceError when llama.cpp cannot create the context (e.g. out of memory) and
    // ConfigError when verdict_rule Logits finds no yes/no tokens.
    DecodingEngine(std::shared_ptr<const Model> model, const EcsoConfig & config);
    // Lane `lane` of `scheduler` (which outlives the engine).
    DecodingEngine(std::shared_ptr<const Model> model, const EcsoConfig & config, BatchScheduler & scheduler,
                   int lane);
    DecodingEngine(const DecodingEngine &) = delete;
    DecodingEngine & operator=(const DecodingEngine &) = delete;

    static constexpr int kSeqAnswer = 0;
    static constexpr int kSeqJudge = 1;
    static constexpr int kSeqCaption = 2;
    static constexpr int kSeqTextOnly = 3;
    static constexpr int kNumSequences = 4;

    // Installs a call's token and progress sink for the duration of the call.
    class ActiveCall {
    public:
        ActiveCall(DecodingEngine & engine, const CallOptions & call);
        ~ActiveCall();
        ActiveCall(const ActiveCall &) = delete;
        ActiveCall & operator=(const ActiveCall &) = delete;

    private:
        DecodingEngine & engine_;
    };

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

    // Called during generation each time a generated token has entered the sequence's cells; it
    // may run other steps (the next token was sampled before it). false stops generation, with
    // stop_reason "judge". `whole_chars`: the pieces so far end on a whole character.
    using TokenHook = std::function<bool(const StepRecord & so_far, bool whole_chars)>;

    // Evaluates `prompt` into sequence `seq` (from the longest reusable prefix when reuse_kv is
    // on, from an empty cache otherwise) and generates up to `max_tokens`.
    StepRecord run_step(const char * name, int seq, const Prompt & prompt, int32_t max_tokens,
                        const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow = nullptr,
                        int32_t quote_limit = 0, const TokenHook * after_token = nullptr);
    // Evaluates the last token `rec` generated into `seq` when a token limit stopped generation
    // before it was (it is never needed there), so the cells hold the whole answer and the next
    // turn, which quotes it, can reuse them all.
    void complete_answer(int seq, const StepRecord & rec);
    StepRecord finish_shadow(ShadowJudge & shadow, const std::vector<llama_token> & judge_rest, int32_t max_tokens);

    // Starts a single-turn request whose first prompt is `first`: keeps the cells of its chat
    // template head (system prompt included) when the previous single-turn request on this engine
    // left them, as llama-server's prompt cache does, and empties the cache otherwise. Kept cells
    // lie where a fresh evaluation puts them (the head is always evaluated first, in a batch of
    // its own), so results stay bit-identical. finish_single_turn says whether the request ended
    // normally, so that the next one may keep its head.
    void start_single_turn(const Prompt & first);
    void finish_single_turn(bool ok) { head_kept_ = ok && config_.reuse_kv; }
    void forget_single_turn() { head_kept_ = false; }

    // ContextOverflowError when `prompt` leaves no token to generate from, ConfigError when an
    // image that must be evaluated in one batch exceeds n_batch.
    void check_prompt_fits(const char * step, const Prompt & prompt) const;
    void throw_if_cancelled(const char * step) const;
    // The token of the call in progress (null between calls), for work done beside the engine.
    const CancelToken * active_cancel() const { return active_cancel_.load(); }
    void cancel();  // the call in progress, if any (from any thread)

    // The judge's P(yes) from the logits of the last evaluated prompt (verdict_rule Logits).
    double p_yes() const;

    // The cells this engine's sequences may hold together (a lane: its share of the context).
    uint32_t n_ctx() const { return scheduler_ ? scheduler_->lane_n_ctx() : llama_n_ctx(ctx_); }
    const Model & model() const { return *model_; }
    // The config of the call in progress: the session's, with the call's sampling and forced
    // verdict (CallOptions) in place of its own.
    const EcsoConfig & config() const { return call_config_ ? *call_config_ : config_; }
    const SamplingConfig & sampling() const { return config().sampling; }
    KvSequences & kv() { return *kv_; }

    // A sequence's cells as llama.cpp saves them, and their restore into `seq` (0 when it failed),
    // for the conversation cache; the highest position `seq` holds (-1: none).
    std::vector<uint8_t> save_sequence(int seq);
    size_t restore_sequence(int seq, const std::vector<uint8_t> & state);
    int32_t seq_pos_max(int seq);
    // The state llama.cpp saves for `seq` holding one token (evaluated alone, then freed): the
    // layout a state file's sequences must have (kv_state_check.hpp). Empties this engine's
    // sequences first.
    std::vector<uint8_t> probe_sequence_state(int seq);

    // Decode calls and tokens of an engine with its own context (a lane's are the scheduler's).
    EngineStats own_stats() const {
        EngineStats s;
        s.decode_calls = decode_calls_.load();
        s.batched_tokens = batched_tokens_.load();
        return s;
    }

    // Encoder output by PromptItem::media_id, so no step re-encodes an image when reuse is on.
    // The single-turn plan empties it per request; the conversation plan keeps it across turns.
    std::map<std::string, std::vector<float>> & embeddings() { return embd_cache_; }
    // While on (a conversation's call), an image this engine has not encoded is looked up in the
    // Model's encoder cache, which every session on the Model shares, and what it encodes goes
    // there too. Single-turn requests encode their image once per request, as llama-server does.
    void share_encodings(bool on) { share_encodings_ = on; }

private:
    void open_shadow(ShadowJudge & shadow, int32_t quote_limit);
    void evaluate_prompt(const Prompt & prompt, size_t first_item, int32_t first_pos, int seq, StepRecord & rec);
    void evaluate_media(const PromptItem & item, int32_t pos, int seq, StepRecord & rec);
    // `extra_cells`: the KV cells the prompt fills beyond its positions (an M-RoPE image's), so
    // that a full context stops generation rather than failing a decode.
    void generate(int seq, int32_t pos, int32_t extra_cells, int32_t max_tokens, StepRecord & rec,
                  const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow = nullptr,
                  const TokenHook * after_token = nullptr);
    void decode_text(const std::vector<llama_token> & tokens, int32_t pos, int seq, const std::string & what);
    // llama_decode of batch_, on the own context or merged into the scheduler's next round.
    void decode_batch(const std::string & what);
    // The logits of the last row of the last decode that asked for any.
    const float * last_logits() const;
    llama_token sample_next(Sampler & sampler);
    // Work that needs the context (or the encoder) to itself: run now, or by the scheduler.
    int32_t exclusive(const std::function<int32_t()> & work);
    void report(const char * step, const char * phase, int32_t done, int32_t total) const;
    static bool abort_requested(void * engine);

    std::shared_ptr<const Model> model_;
    EcsoConfig config_;
    llama_context_ptr own_ctx_;           // null for a lane
    BatchScheduler * scheduler_ = nullptr;  // set for a lane
    int lane_ = 0;
    llama_context * ctx_ = nullptr;       // the one decoded on: own_ctx_'s or the scheduler's
    std::vector<float> lane_logits_;      // a lane's copy of its rows' logits from the last round
    std::atomic<uint64_t> decode_calls_{0};  // read by engine_stats() from any thread
    std::atomic<uint64_t> batched_tokens_{0};
    std::unique_ptr<KvSequences> kv_;
    std::unique_ptr<TokenBatch> batch_;
    // The call in progress: its token (shared, so cancel() can hold it past the call's end) and,
    // for the abort callback on llama.cpp's threads, a plain pointer to it.
    std::mutex active_mutex_;
    std::shared_ptr<CancelToken> active_token_;
    std::atomic<const CancelToken *> active_cancel_{nullptr};
    const ProgressSink * active_progress_ = nullptr;  // touched by the calling thread only
    std::optional<EcsoConfig> call_config_;  // set while a call with its own options runs
    std::optional<YesNoTokens> yes_no_;               // for verdict_rule Logits
    std::map<std::string, std::vector<float>> embd_cache_;
    bool head_kept_ = false;
    bool share_encodings_ = false;  // the cache holds a single-turn request's cells, laid out from empty
};

}  // namespace ecso
