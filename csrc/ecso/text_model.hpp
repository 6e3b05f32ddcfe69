// A loaded text-only model (no projector): a guard model that judges answers in step 2 in place
// of the vision model's self-judge (guard_judge.hpp). The public face names no llama.cpp type;
// the weights live in TextModel::Impl (text_model_impl.hpp).
//
// Thread safety: const methods may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ecso/config.hpp"

namespace ecso {

class TextModel {
public:
    // Throws ConfigError for an option out of range, ModelLoadError when the file is missing,
    // malformed or not a text model, and ResourceError when its KV cache cannot fit. mmproj_gpu is not used.
    // `chat_template`: a llama.cpp built-in template name (or a template's text) in place of the
    // GGUF's own, for a model that carries none ("" keeps the GGUF's).
    TextModel(const std::string & path, const ModelOptions & options, const std::string & chat_template = "");
    ~TextModel();
    TextModel(const TextModel &) = delete;
    TextModel & operator=(const TextModel &) = delete;

    const std::string & path() const;
    const std::string & architecture() const;
    const ModelOptions & options() const;
    int32_t n_threads() const;
    int32_t n_threads_batch() const;
    // The chat template stored in the GGUF, or "" when it has none.
    std::string own_chat_template() const;
    // The template its prompts are framed with: the one given at load, else the GGUF's ("" for none).
    std::string chat_template() const;

    class Impl;
    const Impl & impl() const { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
    std::string chat_template_;
};

}  // namespace ecso
