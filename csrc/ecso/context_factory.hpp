// The llama_context every session (and a guard model's judge) decodes on, created one way for one lane or many: a unified KV
// cache (sequence copies share cells and may be partial), a full-size sliding-window cache, the
// model's thread and flash-attention settings, and the caller's abort callback.
#pragma once

#include <cstdint>

#include "ecso/text_weights.hpp"
#include "llama-cpp.h"

namespace ecso {

// Whose context it is, so that a failure names the options the user set for it.
enum class ContextOwner {
    Session,     // a session's own context, or the shared one of a parallel session's lanes
    JudgeModel,  // a guard model's (TextModel) judge
};

// `parallel`: the session's lanes, each with the model's n_ctx (1 for one lane and for a judge);
// `cells`: the context's size, all lanes together. Throws ResourceError, naming n_ctx and parallel,
// llama.cpp's last log line and what to lower, when llama.cpp cannot create it (its KV cache or
// buffers do not fit the memory left).
llama_context_ptr make_context(const TextWeights & model, ContextOwner owner, int parallel, uint32_t cells,
                               uint32_t n_batch, uint32_t n_seq, ggml_abort_callback abort_callback,
                               void * abort_data);

}  // namespace ecso
