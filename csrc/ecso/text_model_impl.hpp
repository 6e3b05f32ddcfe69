// TextModel's insides (see text_model.hpp): its TextWeights. Internal to the core.
#pragma once

#include "ecso/text_model.hpp"
#include "ecso/text_weights.hpp"

namespace ecso {

class TextModel::Impl {
public:
    Impl(const std::string & path, const ModelOptions & options) : weights_(path, options) { weights_.load(); }
    const TextWeights & weights() const { return weights_; }

private:
    TextWeights weights_;
};

}  // namespace ecso
