// TextModel (see text_model.hpp): forwards to its TextWeights.
#include "ecso/text_model.hpp"

#include "ecso/text_model_impl.hpp"

namespace ecso {

TextModel::TextModel(const std::string & path, const ModelOptions & options, const std::string & chat_template)
    : impl_(std::make_unique<Impl>(path, options)), chat_template_(chat_template) {}

TextModel::~TextModel() = default;

const std::string & TextModel::path() const { return impl_->weights().info().path; }
const std::string & TextModel::architecture() const { return impl_->weights().info().architecture; }
const ModelOptions & TextModel::options() const { return impl_->weights().options(); }
int32_t TextModel::n_threads() const { return impl_->weights().n_threads(); }
int32_t TextModel::n_threads_batch() const { return impl_->weights().n_threads_batch(); }
std::string TextModel::own_chat_template() const { return impl_->weights().own_chat_template(); }
std::string TextModel::chat_template() const { return chat_template_.empty() ? own_chat_template() : chat_template_; }

}  // namespace ecso
