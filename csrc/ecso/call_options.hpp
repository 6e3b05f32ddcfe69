// What one call of EcsoSession takes besides its inputs: the token limit, where streamed text and
// progress go, and the call's cancellation token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "ecso/cancel_token.hpp"
#include "ecso/config.hpp"

namespace ecso {

// Receives the final answer's text as it is decided, in pieces whose concatenation equals
// EcsoResult::answer. Called on the thread running the request.
using TextSink = std::function<void(const std::string & piece)>;

// Where a call is. `phase` is "prefill" (the step's prompt is about to be evaluated; `total` is
// the positions to evaluate), "encode" (the vision encoder runs; `done` counts graph nodes
// computed so far, `total` is 0: unknown) or "generate" (`done` tokens of at most `total` so far).
struct Progress {
    const char * step;
    const char * phase;
    int32_t done;
    int32_t total;
};

// Called on the thread running the request (for "encode": the thread running the encoder), so
// a sink that blocks holds the call where it is; the call's token still cancels it after that.
using ProgressSink = std::function<void(const Progress &)>;

struct CallOptions {
    int32_t max_tokens = 512;  // per-step limit where the config sets none
    TextSink on_text;
    ProgressSink on_progress;
    std::shared_ptr<CancelToken> cancel;  // null: the call makes its own (EcsoSession::cancel() reaches it)
    // This call's sampling in place of the config's (a server request's temperature, top_p,
    // seed), so requests with other sampling share the session and its caches.
    std::optional<SamplingConfig> sampling;
    // This call's branch forced (true: unsafe, false: safe) in place of the config's
    // verdict_override (benchmarks mixing both branches in one session).
    std::optional<bool> force_verdict;
};

}  // namespace ecso
