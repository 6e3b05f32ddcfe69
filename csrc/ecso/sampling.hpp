// Token sampling for one generation step: a llama_sampler chain built from SamplingConfig.
#pragma once

#include "ecso/config.hpp"
#include "ecso/model.hpp"
#include "llama-cpp.h"

namespace ecso {

class Sampler {
public:
    // Greedy when config.temperature <= 0; otherwise top-k / top-p / temperature / seeded draw.
    // ignore_eos bans every end-of-generation token, as llama-server does.
    Sampler(const Model & model, const SamplingConfig & config, uint32_t default_seed);

    // Samples from the logits of the last evaluated token of `ctx` and records it.
    llama_token sample(llama_context * ctx);

private:
    llama_sampler_ptr chain_;
};

}  // namespace ecso
