// The llama_context every session (and a guard model's judge) decodes on, created one way for one lane or many: a unified KV
// cache (sequence copies share cells and may be partial), a full-size sliding-window cache, the
// model's thread and flash-attention settings, and the caller's abort callback.
#pragma once

#include <cstdint>

#include "ecso/text_weights.hpp"
#include "llama-cpp.h"

namespace ecso {

// Throws RuntimeFailure (with llama.cpp's last log line) when llama.cpp cannot create it.
llama_context_ptr make_context(const TextWeights & model, uint32_t n_ctx, uint32_t n_batch, uint32_t n_seq,
                               ggml_abort_callback abort_callback, void * abort_data);

}  // namespace ecso
