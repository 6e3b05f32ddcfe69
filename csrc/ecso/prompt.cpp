// Prompt tokenization through mtmd_tokenize_from_parts (see prompt.hpp).
#include "ecso/prompt.hpp"

#include <algorithm>
#include <cstdio>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"

namespace ecso {

Prompt Prompt::build(const Model & model, const ChatFrame & frame, const std::string & before_image,
                     const PromptImage * image, const std::string & after_image, bool with_tail) {
    struct TextPart {
        std::string text;
        bool parse_special;
    };
    std::vector<mtmd_input_text> texts;
    std::vector<mtmd_input_part> parts;
    const std::vector<TextPart> before = {{frame.head, true}, {before_image, false}};
    const std::vector<TextPart> after = {{after_image, false}, {with_tail ? frame.tail : std::string(), true}};
    texts.reserve(4);
    parts.reserve(5);

    auto add_text = [&](const TextPart & p) {
        if (p.text.empty()) {
            return;
        }
        texts.push_back({p.text.c_str(), p.text.size(), false, p.parse_special});
        parts.push_back({&texts.back(), nullptr});
    };
    for (const auto & p : before) {
        add_text(p);
    }
    mtmd::bitmap_ptr bitmap;
    if (image != nullptr) {
        const RgbImage & img = *image->image;
        bitmap.reset(mtmd_bitmap_init(img.width, img.height, image->placeholder ? nullptr : img.pixels.data()));
        if (!bitmap) {
            throw ImageError("mtmd could not create a bitmap of " + std::to_string(img.width) + "x" +
                             std::to_string(img.height) + " pixels");
        }
        mtmd_bitmap_set_id(bitmap.get(), image->id.c_str());
        parts.push_back({nullptr, bitmap.get()});
    }
    for (const auto & p : after) {
        add_text(p);
    }

    std::vector<const mtmd_input_part *> part_ptrs;
    for (const auto & p : parts) {
        part_ptrs.push_back(&p);
    }
    Prompt prompt;
    prompt.chunks_.reset(mtmd_input_chunks_init());
    clear_log_errors();
    const int32_t status =
        mtmd_tokenize_from_parts(model.mtmd(), prompt.chunks_.get(), part_ptrs.data(), part_ptrs.size(), true);
    if (status == 2) {
        throw ImageError("the projector could not preprocess the image" + last_log_suffix());
    }
    if (status != 0) {
        throw RuntimeFailure("mtmd could not tokenize the prompt (status " + std::to_string(status) + ")" +
                             last_log_suffix());
    }

    const size_t n_chunks = mtmd_input_chunks_size(prompt.chunks_.get());
    const int32_t n_vocab = llama_vocab_n_tokens(model.vocab());
    size_t media_chunks = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
        const mtmd_input_chunk * chunk = mtmd_input_chunks_get(prompt.chunks_.get(), i);
        if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token * tokens = mtmd_input_chunk_get_tokens_text(chunk, &n);
            for (size_t k = 0; k < n; ++k) {
                if (tokens[k] < 0 || tokens[k] >= n_vocab) {
                    throw ModelLoadError(missing_layout_token_message(model));  // Model checks this at load
                }
                prompt.items_.push_back({tokens[k], nullptr, std::string(), 1, 1});
            }
        } else {
            // A sliced image is several chunks sharing the bitmap's id: the ordinal tells them
            // apart, for the embedding cache and prefix matching alike (same image, same slicing).
            const char * id = mtmd_input_chunk_get_id(chunk);
            prompt.items_.push_back({-1, chunk, (id ? std::string(id) : std::string()) + "#" + std::to_string(media_chunks++),
                                     static_cast<int32_t>(mtmd_input_chunk_get_n_pos(chunk)),
                                     static_cast<int32_t>(mtmd_input_chunk_get_n_tokens(chunk))});
        }
    }
    // mtmd tokenizes each part on its own and prepends BOS: the head is its first items.
    std::vector<llama_token> head = model.tokenize(frame.head, false, true);
    if (llama_vocab_get_add_bos(model.vocab())) {
        head.insert(head.begin(), llama_vocab_bos(model.vocab()));
    }
    bool head_matches = head.size() < prompt.items_.size();
    for (size_t i = 0; head_matches && i < head.size(); ++i) {
        head_matches = prompt.items_[i].token == head[i];
    }
    prompt.head_items_ = head_matches ? head.size() : 0;
    return prompt;
}

bool Prompt::is_boundary(size_t item) const {
    if (item == 0 || item >= items_.size()) {
        return item == 0;
    }
    return item == head_items_ || items_[item].is_media() || items_[item - 1].is_media();
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
    uint64_t h = 1469598103934665603ULL;
    auto mix = [&h](uint8_t b) {
        h ^= b;
        h *= 1099511628211ULL;
    };
    for (int shift = 0; shift < 32; shift += 8) {
        mix(static_cast<uint8_t>(image.width >> shift));
        mix(static_cast<uint8_t>(image.height >> shift));
    }
    for (uint8_t b : image.pixels) {
        mix(b);
    }
    char buf[24];
    std::snprintf(buf, sizeof(buf), "img-%016llx", static_cast<unsigned long long>(h));
    return buf;
}

}  // namespace ecso
