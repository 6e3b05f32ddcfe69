// The sampler chain of a generation step (see sampling.hpp).
#include "ecso/sampling.hpp"

#include <cmath>
#include <vector>

#include "ecso/errors.hpp"
#include "ecso/model_impl.hpp"

namespace ecso {

Sampler::Sampler(const Model & model, const SamplingConfig & config, uint32_t default_seed) {
    llama_sampler_chain_params params = llama_sampler_chain_default_params();
    params.no_perf = true;
    chain_.reset(llama_sampler_chain_init(params));

    const int32_t n_vocab = llama_vocab_n_tokens(model.impl().vocab());
    std::vector<llama_logit_bias> biases;
    for (const auto & [token, bias] : config.logit_bias) {
        if (token < 0 || token >= n_vocab) {
            throw ConfigError("logit_bias names token " + std::to_string(token) + " but the vocabulary has " +
                              std::to_string(n_vocab) + " tokens");
        }
        biases.push_back({token, bias});
    }
    if (config.ignore_eos) {
        for (llama_token t = 0; t < n_vocab; ++t) {
            if (model.is_end_of_generation(t)) {
                biases.push_back({t, -INFINITY});
            }
        }
    }
    if (!biases.empty()) {
        llama_sampler_chain_add(chain_.get(), llama_sampler_init_logit_bias(n_vocab, static_cast<int32_t>(biases.size()),
                                                                            biases.data()));
    }
    if (config.temperature <= 0.0f) {
        llama_sampler_chain_add(chain_.get(), llama_sampler_init_greedy());
        return;
    }
    if (config.top_k > 0) {
        llama_sampler_chain_add(chain_.get(), llama_sampler_init_top_k(config.top_k));
    }
    if (config.top_p < 1.0f) {
        llama_sampler_chain_add(chain_.get(), llama_sampler_init_top_p(config.top_p, 1));
    }
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_temp(config.temperature));
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_dist(config.seed.value_or(default_seed)));
}

llama_token Sampler::sample(llama_context * ctx) { return llama_sampler_sample(chain_.get(), ctx, -1); }

llama_token Sampler::sample(const float * logits, int32_t n_vocab) {
    candidates_.resize(static_cast<size_t>(n_vocab));
    for (llama_token t = 0; t < n_vocab; ++t) {
        candidates_[static_cast<size_t>(t)] = llama_token_data{t, logits[t], 0.0f};
    }
    llama_token_data_array array{candidates_.data(), candidates_.size(), -1, false};
    llama_sampler_apply(chain_.get(), &array);
    if (array.selected < 0 || array.selected >= static_cast<int64_t>(array.size)) {
        throw RuntimeFailure("internal: the sampler chain selected no token");
    }
    const llama_token token = array.data[array.selected].id;
    llama_sampler_accept(chain_.get(), token);
    return token;
}

}  // namespace ecso
