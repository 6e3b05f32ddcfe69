// Context creation (see context_factory.hpp).
#include "ecso/context_factory.hpp"

#include <string>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"

namespace ecso {

namespace {

// What was asked and what would make it smaller, in the options the owner's user set: a parallel
// session's cells are its lanes' n_ctx together, a sum the user never typed.
std::string could_not_create(const TextWeights & model, ContextOwner owner, int parallel, uint32_t cells) {
    const std::string n_ctx = std::to_string(model.options().n_ctx);
    const bool gpu = model.options().n_gpu_layers != 0;  // a layer's KV cells live where its weights are
    if (owner == ContextOwner::JudgeModel) {
        return "llama.cpp could not create the judge model's context for its n_ctx " + n_ctx + last_log_suffix() +
               ". Lower the judge model's n_ctx" + (gpu ? ", offload fewer of its layers (n_gpu_layers)" : "") +
               " or free memory";
    }
    std::string asked = "for n_ctx " + n_ctx + " and parallel " + std::to_string(parallel);
    std::string fix = "Lower n_ctx";
    if (parallel > 1) {
        asked += ", " + std::to_string(cells) + " cells in all";
        fix += " or parallel";
    }
    if (gpu) {
        fix += ", offload fewer layers (n_gpu_layers)";
    }
    fix += parallel > 1 && !gpu ? ", or free memory" : " or free memory";
    return "llama.cpp could not create the session's context " + asked + last_log_suffix() + ". " + fix;
}

}  // namespace

llama_context_ptr make_context(const TextWeights & model, ContextOwner owner, int parallel, uint32_t cells,
                               uint32_t n_batch, uint32_t n_seq, ggml_abort_callback abort_callback,
                               void * abort_data) {
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = cells;
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
        throw ResourceError(could_not_create(model, owner, parallel, cells));
    }
    return ctx;
}

}  // namespace ecso
