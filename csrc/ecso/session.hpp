// EcsoSession: the public entry point. It owns a DecodingEngine (the llama_context and its KV
// cache) and runs a request plan on it: the paper's single-turn plan (run, answer, judge) or the
// conversation plan (chat).
//
// Ownership: a session owns its context and shares its Model (kept alive by shared_ptr).
// Thread safety: the calls on one session are serialised (a second caller waits). Each call has
// its own CancelToken (CallOptions::cancel); cancel() may be called from any thread and cancels
// the token of the call in progress, if any.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "ecso/call_options.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/config.hpp"
#include "ecso/conversation.hpp"
#include "ecso/conversation_cache.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/image.hpp"
#include "ecso/model.hpp"
#include "ecso/result.hpp"

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

    // ECSO over a whole conversation (conversation_plan.hpp), streamed like run(). `protect`
    // false answers it directly (step 1 alone). The conversation's KV cells and image encodings
    // are kept for its next turn, within the config's bounds.
    EcsoResult chat(const Conversation & messages, const CallOptions & call, bool protect = true);

    // What the session keeps between chat calls, and a way to drop it.
    ConversationCache::Stats cache_stats();
    void clear_cache();

    // Cancels the call in progress (its token); does nothing when no call runs, so it can never
    // stop a later call. To cancel a call that may not have started yet, cancel its own token.
    void cancel();

    const EcsoConfig & config() const { return config_; }
    const ChatFrame & frame() const { return frame_; }
    const Model & model() const { return *model_; }
    uint32_t n_ctx() const;

private:
    std::shared_ptr<const Model> model_;
    EcsoConfig config_;
    ChatFrame frame_;
    std::unique_ptr<DecodingEngine> engine_;
    ConversationCache conversations_;
    std::mutex run_mutex_;
};

}  // namespace ecso
