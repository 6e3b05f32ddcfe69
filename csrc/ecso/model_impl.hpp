// Model's insides (see model.hpp): the text model (TextWeights) and its vision projector
// (mtmd_context), and the loading that validates them. Internal to the core: it names llama.cpp types.
//
// Ownership: Impl owns both handles; the projector is released before the text model it points
// to. Thread safety: const methods may be called from any thread; the vision encoder is shared
// state inside mtmd, so encode calls from sessions on one Model are serialised by vision_mutex().
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ecso/call_options.hpp"
#include "ecso/config.hpp"
#include "ecso/encoder_cache.hpp"
#include "ecso/gguf_check.hpp"
#include "ecso/model.hpp"
#include "ecso/sequence_store.hpp"
#include "ecso/text_weights.hpp"
#include "llama-cpp.h"
#include "mtmd.h"

namespace ecso {

class Model::Impl {
public:
    // Loads and checks the pair, all but the image layout check (Model's, which needs a Prompt).
    // Throws ModelLoadError when either file is missing, malformed or does not fit the other.
    Impl(const std::string & text_model_path, const std::string & mmproj_path, const ModelOptions & options);
    Impl(const Impl &) = delete;
    Impl & operator=(const Impl &) = delete;

    llama_model * llama() const { return text_->llama(); }
    const llama_vocab * vocab() const { return text_->vocab(); }
    mtmd_context * mtmd() const { return mtmd_.get(); }
    std::mutex & vision_mutex() const { return vision_mutex_; }
    // Who watches the next encode: while set (non-null), the encoder reports progress every few
    // graph nodes, and when the token is cancelled it stops there and its output is garbage: the
    // caller must check the token after mtmd_encode_chunk. mtmd's encoder has no abort callback;
    // the ggml scheduler's eval callback serves as one. Call with vision_mutex() held, and again
    // with nullptr when the encode is done.
    struct EncodeObserver {
        const CancelToken * cancel = nullptr;
        const ProgressSink * progress = nullptr;
        const char * step = "";
    };
    void set_encode_observer(const EncodeObserver * observer) const {
        encode_nodes_ = 0;
        encode_observer_.store(observer);
    }

    const ModelOptions & options() const { return text_->options(); }
    // Shared by every session on this model: its own lock makes it safe from any thread.
    EncoderCache & encoder_cache() const { return encoder_cache_; }
    SequenceStore & sequence_store() const { return sequence_store_; }
    const TextWeights & text() const { return *text_; }
    const TextModelInfo & text_info() const { return text_->info(); }
    const ProjectorInfo & projector_info() const { return projector_info_; }
    // How the projector was made safe to load: "tensor table", "child process" or "child process (cached)".
    const std::string & projector_check() const { return projector_check_; }
    int32_t n_threads() const { return text_->n_threads(); }
    int32_t n_threads_batch() const { return text_->n_threads_batch(); }
    bool repack() const { return text_->repack(); }
    llama_flash_attn_type flash_attn_type() const { return text_->flash_attn_type(); }
    int32_t n_embd() const { return text_->n_embd(); }
    int32_t n_ctx_train() const { return text_->n_ctx_train(); }
    std::string own_chat_template() const { return text_->own_chat_template(); }
    std::vector<llama_token> tokenize(const std::string & text, bool add_special, bool parse_special) const {
        return text_->tokenize(text, add_special, parse_special);
    }
    std::string token_piece(llama_token token, bool special = false) const { return text_->token_piece(token, special); }
    bool is_end_of_generation(llama_token token) const { return text_->is_end_of_generation(token); }

private:
    // Declared in load order: members are destroyed in reverse, so mtmd goes before the model.
    std::optional<TextWeights> text_;
    ProjectorInfo projector_info_;
    std::string projector_check_;
    // Refuses an unsupported type (unless ECSO_TRUST_PROJECTOR=1) and runs the child-process check
    // for types gguf_check.cpp does not validate tensor by tensor.
    void admit_projector(const std::string & text_model_path, const std::string & mmproj_path);
    static bool encode_eval_callback(ggml_tensor * node, bool ask, void * model);
    mutable std::atomic<const EncodeObserver *> encode_observer_{nullptr};
    mutable uint32_t encode_nodes_ = 0;  // touched by the encoding thread only (vision_mutex_)
    mtmd::context_ptr mtmd_;
    mutable std::mutex vision_mutex_;
    mutable EncoderCache encoder_cache_;
    mutable SequenceStore sequence_store_;
};

// The error for a pair whose projector frames images with tokens the text model does not have.
std::string missing_layout_token_message(const Model::Impl & model);

}  // namespace ecso
