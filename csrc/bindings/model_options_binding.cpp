// Builds the ecso::ModelOptions shared by the Model and TextModel bindings (model_options_binding.hpp).
#include "bindings/model_options_binding.hpp"

namespace ecso_bindings {

ecso::ModelOptions model_options(uint32_t n_ctx, uint32_t n_batch, int32_t n_gpu_layers, int32_t n_threads,
                                 int32_t n_threads_batch, std::optional<bool> flash_attn,
                                 std::optional<bool> repack, bool verbose) {
    ecso::ModelOptions options;
    options.n_ctx = n_ctx;
    options.n_batch = n_batch;
    options.n_gpu_layers = n_gpu_layers;
    options.n_threads = n_threads;
    options.n_threads_batch = n_threads_batch;
    options.flash_attn = flash_attn;
    options.repack = repack;
    options.verbose = verbose;
    return options;
}

}  // namespace ecso_bindings
