// A loaded text model: the llama_model with its vocabulary, validated before llama.cpp's loader
// runs, and the thread counts and options contexts on it use. Model::Impl (a vision pair) and
// TextModel::Impl (a text-only judge) each own one. Internal to the core: it names llama.cpp types.
//
// Thread safety: const methods may be called from any thread.
#pragma once

#include <string>
#include <vector>

#include "ecso/config.hpp"
#include "ecso/gguf_check.hpp"
#include "llama-cpp.h"

namespace ecso {

class TextWeights {
public:
    // Checks the options and the file's metadata; load() reads the weights. Two steps, so that a
    // vision pair's projector is checked before the text model's weights are read. Throws
    // ConfigError for an option out of range and ModelLoadError when the file is missing or malformed.
    TextWeights(const std::string & path, const ModelOptions & options);
    // Throws ModelLoadError when llama.cpp cannot load the file, ResourceError when its KV cache cannot fit.
    void load();
    TextWeights(const TextWeights &) = delete;
    TextWeights & operator=(const TextWeights &) = delete;

    llama_model * llama() const { return model_.get(); }
    const llama_vocab * vocab() const { return vocab_; }
    const ModelOptions & options() const { return options_; }
    const TextModelInfo & info() const { return info_; }
    // Thread counts in effect: the options' values, defaulted and clamped to the hardware threads.
    int32_t n_threads() const { return n_threads_; }
    int32_t n_threads_batch() const { return n_threads_batch_; }
    // Whether the weights were repacked into the CPU backend's extra buffer types (the options'
    // value, or repack_by_default()).
    bool repack() const { return repack_; }
    // The flash-attention setting for contexts on this model (auto unless the options force it).
    llama_flash_attn_type flash_attn_type() const;
    int32_t n_embd() const;  // the input embedding size
    int32_t n_ctx_train() const;
    // The chat template stored in the GGUF, or "" when it has none.
    std::string own_chat_template() const;

    // Text tokenization with llama.cpp's tokenizer (no chat framing).
    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    // The bytes of one token (special tokens render as "" unless `special`).
    std::string token_piece(llama_token token, bool special = false) const;
    bool is_end_of_generation(llama_token token) const;

private:
    // Throws ResourceError when n_ctx's KV cache alone is larger than the machine's memory.
    void check_context_fits() const;

    ModelOptions options_;
    TextModelInfo info_;
    int32_t n_threads_ = 1;
    int32_t n_threads_batch_ = 1;
    bool repack_ = true;
    llama_model_ptr model_;
    const llama_vocab * vocab_ = nullptr;
};

}  // namespace ecso
