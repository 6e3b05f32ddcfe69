// A loaded vision-language pair: the text model and its vision projector, validated before either
// loader runs. This is the public face: it names no llama.cpp type, so ecso.hpp compiles without
// llama.cpp's headers. The handles and the loading live in Model::Impl (model_impl.hpp), which the
// core's internals reach through impl().
//
// Thread safety: const methods may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ecso/call_options.hpp"
#include "ecso/config.hpp"
#include "ecso/encoder_cache.hpp"
#include "ecso/gguf_check.hpp"

namespace ecso {

class Model {
public:
    // Throws ModelLoadError when either file is missing, malformed or does not fit the other, and
    // ResourceError when n_ctx's KV cache alone is larger than the machine's memory.
    Model(const std::string & text_model_path, const std::string & mmproj_path, const ModelOptions & options);
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const ModelOptions & options() const;
    const TextModelInfo & text_info() const;
    const ProjectorInfo & projector_info() const;
    // How the projector was made safe to load: "tensor table", "child process" or "child process (cached)".
    const std::string & projector_check() const;
    // Thread counts in effect: the options' values, defaulted and clamped to the hardware threads.
    int32_t n_threads() const;
    int32_t n_threads_batch() const;
    // Whether the weights were repacked into the CPU backend's extra buffer types (the options'
    // value, or repack_by_default()).
    bool repack() const;
    int32_t n_embd() const;  // the text model's input embedding size
    int32_t n_ctx_train() const;
    // The chat template stored in the text GGUF, or "" when it has none.
    std::string own_chat_template() const;

    // Text tokenization with llama.cpp's tokenizer (no chat framing). Token ids are llama.cpp's
    // (llama_token is int32_t).
    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    // The bytes of one token (special tokens render as "" unless `special`).
    std::string token_piece(int32_t token, bool special = false) const;
    bool is_end_of_generation(int32_t token) const;
    // The encoder outputs kept for the conversations of every session on this model.
    EncoderCacheStats encoder_cache_stats() const;
    void clear_encoder_cache() const;

    // The llama.cpp and mtmd handles, for the core's internals (model_impl.hpp defines it).
    class Impl;
    const Impl & impl() const { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace ecso
