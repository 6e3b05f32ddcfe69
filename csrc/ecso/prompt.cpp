// Prompt tokenization through mtmd_tokenize_from_parts (see prompt.hpp).
#include "ecso/prompt.hpp"

#include <algorithm>
#include <cstdio>

#include "ecso/errors.hpp"
#include "ecso/fnv_hash.hpp"
#include "ecso/logging.hpp"
#include "ecso/model_impl.hpp"

namespace ecso {

Prompt Prompt::build(const Model & model, const ChatFrame & frame, const std::string & before_image,
                     const PromptImage * image, const std::string & after_image, bool with_tail) {
    return build_parts(model, frame_parts(frame, before_image, image, after_image, with_tail));
}

std::vector<PromptPart> Prompt::frame_parts(const ChatFrame & frame, const std::string & before_image,
                                            const PromptImage * image, const std::string & after_image,
                                            bool with_tail) {
    std::vector<PromptPart> parts;
    parts.push_back({frame.head, true, nullptr, false});
    // The user's content starts a batch: later steps share the head with step 1.
    parts.push_back({before_image, false, nullptr, true});
    if (image != nullptr) {
        parts.push_back({std::string(), false, image, false});
    }
    parts.push_back({after_image, false, nullptr, false});
    if (with_tail) {
        parts.push_back({frame.tail, true, nullptr, false});
    }
    return parts;
}

Prompt Prompt::build_parts(const Model & model, const std::vector<PromptPart> & parts) {
    Prompt prompt;
    const Model::Impl & m = model.impl();
    const llama_vocab * vocab = m.vocab();
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    if (llama_vocab_get_add_bos(vocab)) {
        prompt.items_.push_back({llama_vocab_bos(vocab), nullptr, std::string(), 1, 1});
    }
    for (const PromptPart & part : parts) {
        if (part.boundary && (prompt.boundaries_.empty() || prompt.boundaries_.back() != prompt.items_.size())) {
            prompt.boundaries_.push_back(prompt.items_.size());
        }
        if (!part.tokens.empty()) {
            for (size_t k = 0; k < part.tokens.size(); ++k) {
                if (part.tokens[k] < 0 || part.tokens[k] >= n_vocab) {
                    throw RuntimeFailure("internal: a prompt token is outside the vocabulary");
                }
                if (part.token_batches && k > 0) {
                    prompt.boundaries_.push_back(prompt.items_.size());
                }
                prompt.items_.push_back({part.tokens[k], nullptr, std::string(), 1, 1});
            }
            continue;
        }
        if (part.image == nullptr) {
            if (part.text.empty()) {
                continue;
            }
            for (llama_token t : m.tokenize(part.text, false, part.parse_special)) {
                if (t < 0 || t >= n_vocab) {
                    throw ModelLoadError(missing_layout_token_message(m));  // Model checks this at load
                }
                prompt.items_.push_back({t, nullptr, std::string(), 1, 1});
            }
            continue;
        }
        const RgbImage & img = *part.image->image;
        mtmd::bitmap_ptr bitmap(
            mtmd_bitmap_init(img.width, img.height, part.image->placeholder ? nullptr : img.pixels.data()));
        if (!bitmap) {
            throw ImageError("mtmd could not create a bitmap of " + std::to_string(img.width) + "x" +
                             std::to_string(img.height) + " pixels");
        }
        mtmd_bitmap_set_id(bitmap.get(), part.image->id.c_str());
        const mtmd_input_part bitmap_part{nullptr, bitmap.get()};
        const mtmd_input_part * part_ptr = &bitmap_part;
        mtmd::input_chunks_ptr chunks(mtmd_input_chunks_init());
        // A sliced image is several chunks sharing the bitmap's id: the ordinal tells them apart,
        // for the embedding cache and prefix matching alike (same image, same slicing). It counts
        // within the image part, so an image's chunks have the same names wherever it is sent.
        size_t ordinal = 0;
        clear_log_errors();
        const int32_t status = mtmd_tokenize_from_parts(m.mtmd(), chunks.get(), &part_ptr, 1, false);
        if (status == 2) {
            throw ImageError("the projector could not preprocess the image" + last_log_suffix());
        }
        if (status != 0) {
            throw RuntimeFailure("mtmd could not tokenize the prompt (status " + std::to_string(status) + ")" +
                                 last_log_suffix());
        }
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
            const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks.get(), i);
            if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                size_t n = 0;
                const llama_token * tokens = mtmd_input_chunk_get_tokens_text(chunk, &n);
                for (size_t k = 0; k < n; ++k) {
                    if (tokens[k] < 0 || tokens[k] >= n_vocab) {
                        throw ModelLoadError(missing_layout_token_message(m));
                    }
                    prompt.items_.push_back({tokens[k], nullptr, std::string(), 1, 1});
                }
            } else {
                const char * id = mtmd_input_chunk_get_id(chunk);
                const std::string name = id ? std::string(id) : std::string();
                prompt.items_.push_back({-1, chunk, name + "#" + std::to_string(ordinal++),
                                         static_cast<int32_t>(mtmd_input_chunk_get_n_pos(chunk)),
                                         static_cast<int32_t>(mtmd_input_chunk_get_n_tokens(chunk))});
            }
        }
        prompt.chunks_.push_back(std::move(chunks));
    }
    if (llama_vocab_get_add_eos(vocab)) {
        prompt.items_.push_back({llama_vocab_eos(vocab), nullptr, std::string(), 1, 1});
    }
    if (!prompt.boundaries_.empty() && prompt.boundaries_.back() >= prompt.items_.size()) {
        prompt.boundaries_.pop_back();  // a boundary past the last item splits nothing
    }
    return prompt;
}

bool Prompt::is_boundary(size_t item) const {
    if (item == 0 || item >= items_.size()) {
        return item == 0;
    }
    return items_[item].is_media() || items_[item - 1].is_media() ||
           std::binary_search(boundaries_.begin(), boundaries_.end(), item);
}

size_t Prompt::reuse_boundary(size_t shared_items) const {
    for (size_t b = std::min(shared_items, items_.size() - 1); b > 0; --b) {
        if (is_boundary(b)) {
            return b;
        }
    }
    return 0;
}

int32_t Prompt::n_pos() const {
    int32_t n = 0;
    for (const auto & item : items_) {
        n += item.n_pos;
    }
    return n;
}

int32_t Prompt::n_cells() const {
    int32_t n = 0;
    for (const auto & item : items_) {
        n += item.n_cells;
    }
    return n;
}

std::vector<llama_token> Prompt::input_tokens() const {
    std::vector<llama_token> out;
    out.reserve(items_.size());
    for (const auto & item : items_) {
        out.push_back(item.is_media() ? -1 : item.token);
    }
    return out;
}

int32_t Prompt::image_tokens() const {
    int32_t n = 0;
    for (const auto & item : items_) {
        if (item.is_media()) {
            n += item.n_cells;
        }
    }
    return n;
}

int32_t Prompt::positions_before_image() const {
    int32_t n = 0;
    for (const auto & item : items_) {
        if (item.is_media()) {
            return n;
        }
        n += item.n_pos;
    }
    return n;
}

std::string image_content_id(const RgbImage & image) {
    Fnv1a64 h;
    for (int shift = 0; shift < 32; shift += 8) {
        h.add(static_cast<uint8_t>(image.width >> shift));
        h.add(static_cast<uint8_t>(image.height >> shift));
    }
    h.add(image.pixels.data(), image.pixels.size());
    char buf[24];
    std::snprintf(buf, sizeof(buf), "img-%016llx", static_cast<unsigned long long>(h.value));
    return buf;
}

}  // namespace ecso
