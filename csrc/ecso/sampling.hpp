// Token sampling for one generation step: a llama_sampler chain built from SamplingConfig.
#pragma once

#include <vector>

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
    // The same from a copy of one row of logits (a parallel session's lane: the shared context's
    // logits belong to the next round by the time the lane samples). The same steps as
    // llama_sampler_sample's CPU path, so a row gives the token the context would.
    llama_token sample(const float * logits, int32_t n_vocab);

private:
    llama_sampler_ptr chain_;
    std::vector<llama_token_data> candidates_;
};

}  // namespace ecso
