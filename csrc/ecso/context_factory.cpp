// Context creation (see context_factory.hpp).
#include "ecso/context_factory.hpp"

#include <string>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"

namespace ecso {

llama_context_ptr make_context(const TextWeights & model, uint32_t n_ctx, uint32_t n_batch, uint32_t n_seq,
                               ggml_abort_callback abort_callback, void * abort_data) {
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    cparams.n_batch = n_batch;
    cparams.n_ubatch = n_batch;
    cparams.n_seq_max = n_seq;
    // One cell pool for all sequences: seq_cp then shares cells, and partial copies are allowed.
    cparams.kv_unified = true;
    // Sliding-window layers (Gemma 3) may overwrite a cell once it is outside the window of the
    // one sequence holding it, and a later step that shares that prefix would then attend without
    // it. A full-size window cache never overwrites a cell a step can still share; at the default
    // n_ctx it costs nothing, since n_swa * 4 sequences already reach n_ctx (docs/model-families.md).
    cparams.swa_full = llama_model_n_swa(model.llama()) > 0;
    cparams.n_threads = model.n_threads();
    cparams.n_threads_batch = model.n_threads_batch();
    cparams.flash_attn_type = model.flash_attn_type();
    cparams.abort_callback = abort_callback;
    cparams.abort_callback_data = abort_data;
    cparams.no_perf = true;
    clear_log_errors();
    llama_context_ptr ctx(llama_init_from_model(model.llama(), cparams));
    if (!ctx) {
        throw RuntimeFailure("llama.cpp could not create a context of " + std::to_string(n_ctx) + " tokens" +
                             last_log_suffix() + ". Lower n_ctx" + (n_seq > 4 ? " or parallel" : "") +
                             " or free memory");
    }
    return ctx;
}

}  // namespace ecso
