// EcsoSession: the public entry point. It owns its slots, each a DecodingEngine (the KV
// sequences of one request at a time) with its conversation cache, and runs a request plan on a
// free slot: the paper's single-turn plan (run, answer, judge) or the conversation plan (chat).
// With parallel = 1 the one slot owns its llama_context; with parallel = N the N slots are lanes
// of one BatchScheduler, and calls from N threads decode together in one batch per round.
//
// Ownership: a session owns its context(s) and shares its Model (kept alive by shared_ptr).
// Thread safety: every method may be called from any thread. A call waits for a free slot (with
// parallel = 1: for the call in progress). Each call has its own CancelToken
// (CallOptions::cancel), which also stops it while it waits; cancel() cancels the calls in
// progress, if any.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ecso/call_options.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/config.hpp"
#include "ecso/conversation.hpp"
#include "ecso/image.hpp"
#include "ecso/model.hpp"
#include "ecso/result.hpp"
#include "ecso/stats.hpp"
#include "ecso/text_model.hpp"

namespace ecso {

class EcsoSession {
public:
    // Throws ConfigError for an invalid config or an unrecognised chat template, and
    // ResourceError when llama.cpp cannot create a context (its own, or a judge model's; e.g. out of memory).
    // `parallel`: requests that run together, 1 to kMaxParallel; each has the model's n_ctx.
    // `judge_model` (with `judge_format`, a name of guard_formats.hpp): a text-only guard model
    // judges step 2 in place of the vision model's self-judge (guard_judge.hpp); it judges after
    // the answer, so the config's judge modes must be the paper's (ConfigError otherwise).
    EcsoSession(std::shared_ptr<const Model> model, EcsoConfig config, int parallel = 1,
                std::shared_ptr<const TextModel> judge_model = nullptr, const std::string & judge_format = "");
    ~EcsoSession();
    static constexpr int kMaxParallel = 64;  // llama.cpp's 256 sequences, 4 a request
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

    // ECSO over a whole conversation (conversation_plan.hpp), streamed like run(). `protect`
    // false answers it directly (step 1 alone). The conversation's KV cells and image encodings
    // are kept for its next turn, within the config's bounds.
    EcsoResult chat(const Conversation & messages, const CallOptions & call, bool protect = true);

    // What the session keeps between chat calls (summed over its slots), and a way to drop it.
    CacheStats cache_stats();
    void clear_cache();

    // One request of run_many: an image and a query (run / answer, or judge when `response` is
    // set), or a conversation (chat).
    struct BatchItem {
        RgbImage image;
        std::string query;
        std::optional<Conversation> messages;
        bool protect = true;
        std::optional<std::string> response;
    };
    // Makes item `index`; called on the thread that will run it. An exception fails that item.
    using ItemSource = std::function<BatchItem(size_t index)>;
    // Receives item `index`'s result, or the error that failed it (result null), on its thread.
    // An exception it throws cancels the whole run.
    using ItemSink = std::function<void(size_t index, const EcsoResult * result, std::exception_ptr error)>;
    // Runs `n` requests with up to `parallel` in flight, items handed out in order at scheduler
    // rounds (so the same input gives the same batches and results). One item's failure fails
    // only that item. `call.cancel` stops the whole run (CancelledError); `call.max_tokens` is
    // every item's limit; streaming sinks do not apply.
    void run_many(size_t n, const ItemSource & source, const ItemSink & sink, const CallOptions & call);

    // Writes what the conversation caches keep (saved KV sequences, the map of their cells,
    // encoder outputs, captions) to `path`, atomically (session_state_file.hpp); waits for the
    // calls in progress. Throws StateFileError when the file cannot be written, ConfigError
    // when this model's KV state cannot be checked on load (so it is not saved).
    void save_state(const std::string & path);
    // Replaces the caches with a file's, after checking all of it. Throws StateFileError (the
    // caches unchanged) for a missing, damaged or truncated file, or one written for another
    // model, context or format version. Returns the caches' sizes after the load.
    CacheStats load_state(const std::string & path);

    // Requests, decode calls, tokens batched and the most requests in flight at once.
    EngineStats engine_stats();
    int parallel() const;

    // Cancels the call in progress (its token); does nothing when no call runs, so it can never
    // stop a later call. To cancel a call that may not have started yet, cancel its own token.
    void cancel();

    const EcsoConfig & config() const;
    const ChatFrame & frame() const;
    const Model & model() const;
    // Who judges step 2: "self", or the guard model's file name; and the guard's format ("" for self).
    std::string judge_model() const;
    std::string judge_format() const;
    uint32_t n_ctx() const;

private:
    // Slots, engines and scheduler live in session.cpp, so this header (the public door, through
    // ecso.hpp) names no llama.cpp type.
    class Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace ecso
