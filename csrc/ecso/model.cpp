// Model's public face (see model.hpp): loads the pair through Model::Impl, then refuses a pair
// whose image layout the text model cannot spell. That last check builds a Prompt, so it lives
// here, above prompt.cpp, while model_impl.cpp (which Prompt uses) stays below it.
#include "ecso/model.hpp"

#include <cstdint>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/errors.hpp"
#include "ecso/image.hpp"
#include "ecso/model_impl.hpp"
#include "ecso/prompt.hpp"

namespace ecso {
namespace {

// mtmd frames some families' image chunks with text tokens it looks up by their text in the text
// model's vocabulary (SmolVLM: <fake_token_around_image>, <global-img>, "\n\n"); one that is missing
// becomes the id -1 in the prompt, which crashed the process (found pairing a LLaVA text model with a
// SmolVLM projector). Prompt::build refuses such a prompt: building one for a small image here,
// without an encode, refuses the pair at load.
void check_image_layout_tokens(const Model & model) {
    const RgbImage probe{64, 64, std::vector<uint8_t>(64 * 64 * 3, 128)};
    const PromptImage image{&probe, image_content_id(probe), false};
    try {
        Prompt::build(model, ChatFrame{}, "", &image, "");
    } catch (const ImageError &) {
        // an image mtmd cannot take is reported with the request that sends one
    } catch (const RuntimeFailure &) {
        // so is a prompt mtmd cannot tokenize
    }
}

}  // namespace

Model::Model(const std::string & text_model_path, const std::string & mmproj_path, const ModelOptions & options)
    : impl_(std::make_unique<Impl>(text_model_path, mmproj_path, options)) {
    check_image_layout_tokens(*this);
}

Model::~Model() = default;

const ModelOptions & Model::options() const { return impl_->options(); }
const TextModelInfo & Model::text_info() const { return impl_->text_info(); }
const ProjectorInfo & Model::projector_info() const { return impl_->projector_info(); }
const std::string & Model::projector_check() const { return impl_->projector_check(); }
int32_t Model::n_threads() const { return impl_->n_threads(); }
int32_t Model::n_threads_batch() const { return impl_->n_threads_batch(); }
bool Model::repack() const { return impl_->repack(); }
int32_t Model::n_embd() const { return impl_->n_embd(); }
int32_t Model::n_ctx_train() const { return impl_->n_ctx_train(); }
std::string Model::own_chat_template() const { return impl_->own_chat_template(); }
EncoderCacheStats Model::encoder_cache_stats() const { return impl_->encoder_cache().stats(); }
void Model::clear_encoder_cache() const { impl_->encoder_cache().clear(); }

std::vector<int32_t> Model::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    return impl_->tokenize(text, add_special, parse_special);
}

std::string Model::token_piece(int32_t token, bool special) const { return impl_->token_piece(token, special); }

bool Model::is_end_of_generation(int32_t token) const { return impl_->is_end_of_generation(token); }

}  // namespace ecso
