// The ecso::ModelOptions that _core.Model and _core.TextModel build from the load keywords they
// share, so one keyword means one field on both.
#pragma once

#include <cstdint>
#include <optional>

#include "ecso/config.hpp"

namespace ecso_bindings {

// Fields a caller leaves out keep ModelOptions' defaults: Model adds mmproj_gpu and seed, which a
// TextModel has no use for. The Python wrappers (model.py) validate the values first, with
// messages of their own; the constructors' parameter types stay theirs, so pybind11's conversion
// errors read as before.
ecso::ModelOptions model_options(uint32_t n_ctx, uint32_t n_batch, int32_t n_gpu_layers, int32_t n_threads,
                                 int32_t n_threads_batch, std::optional<bool> flash_attn,
                                 std::optional<bool> repack, bool verbose);

}  // namespace ecso_bindings
