// A step's prompt as the KV cache sees it: text tokens and media chunks in order, each with the
// positions it occupies. Two prompts can be compared item by item to find a shared prefix.
#pragma once

#include <string>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/image.hpp"
#include "ecso/model.hpp"
#include "mtmd.h"

namespace ecso {

struct PromptItem {
    llama_token token = -1;                    // a text token, or -1 for a media chunk
    const mtmd_input_chunk * media = nullptr;  // valid only inside the Prompt that made it
    std::string media_id;                      // the image's content hash, "#", the chunk's ordinal
    int32_t n_pos = 1;                         // positions occupied (image: its token count, or
                                               // max(rows, cols) of its grid with M-RoPE)
    int32_t n_cells = 1;                       // KV cells it fills (image: its token count)

    bool is_media() const { return token < 0; }
    // Same KV contents when placed at the same position.
    bool same_as(const PromptItem & other) const {
        return token == other.token && is_media() == other.is_media() && media_id == other.media_id &&
               n_pos == other.n_pos;
    }
};

// The image part of a prompt: its pixels (or only its size, for a placeholder) and identity.
struct PromptImage {
    const RgbImage * image = nullptr;
    std::string id;            // content hash; equal ids mean equal encoder output
    bool placeholder = false;  // size-only: the step will reuse cached KV or embeddings
};

// One piece of a prompt: text (chat-template text is parsed for special tokens, a message's own
// text is not) or an image. `boundary`: a batch starts here, so a prompt that shares everything
// before it with a cached sequence can reuse that much (see is_boundary).
struct PromptPart {
    std::string text;
    bool parse_special = false;
    const PromptImage * image = nullptr;  // set: an image part (text unused)
    bool boundary = false;
    // Set: these tokens as they are (text unused), e.g. an answer as it was generated. With
    // `token_batches` each is a batch of its own, as generation decoded them, so a fresh
    // evaluation computes exactly the cells generation left.
    std::vector<llama_token> tokens;
    bool token_batches = false;
};

class Prompt {
public:
    // Tokenizes each part on its own (text with llama.cpp's tokenizer, an image through mtmd)
    // and joins them, BOS first when the vocabulary adds one: what mtmd_tokenize_from_parts makes
    // of the same parts, except that adjacent images are never merged into one video frame pair.
    static Prompt build_parts(const Model & model, const std::vector<PromptPart> & parts);

    // Tokenizes head + user content + tail through mtmd, so media markers inside user text stay
    // text (no injected image slots) and chat-template special tokens are parsed only in the frame.
    // With an image, `before_image` and `after_image` are the user text on each side of it.
    // `with_tail` false leaves the prompt open (shadow judging continues it token by token).
    static Prompt build(const Model & model, const ChatFrame & frame, const std::string & before_image,
                        const PromptImage * image, const std::string & after_image, bool with_tail = true);
    // The parts build() joins.
    static std::vector<PromptPart> frame_parts(const ChatFrame & frame, const std::string & before_image,
                                               const PromptImage * image, const std::string & after_image,
                                               bool with_tail = true);

    const std::vector<PromptItem> & items() const { return items_; }
    int32_t n_pos() const;
    // Its tokens, the KV cells it fills: what the context must hold. More than n_pos() with an
    // M-RoPE image (Qwen-VL), whose tokens share positions.
    int32_t n_cells() const;

    // Canonical batch boundaries. Prompt evaluation splits batches at the parts marked as
    // boundaries (the end of the chat template head; in a conversation, every part) and around
    // media, and every step reuses the cache only up to one of these boundaries. A shared prefix
    // then holds exactly the values a fresh evaluation computes, and the rest is evaluated in the
    // same batches as from an empty cache: results are bit-identical.
    bool is_boundary(size_t item) const;
    // The last part boundary (in a conversation: where the assistant prefix starts), 0 if none.
    size_t last_boundary() const { return boundaries_.empty() ? 0 : boundaries_.back(); }
    // The largest boundary that does not exceed `shared_items` (0 when there is none).
    size_t reuse_boundary(size_t shared_items) const;
    int32_t image_tokens() const;      // tokens of the image, 0 without one
    int32_t positions_before_image() const;
    // Text token ids in order, -1 standing for each media chunk.
    std::vector<llama_token> input_tokens() const;

private:
    std::vector<mtmd::input_chunks_ptr> chunks_;  // one list per image part
    std::vector<PromptItem> items_;
    std::vector<size_t> boundaries_;  // items where a part marked `boundary` starts, ascending
};

// FNV-1a hash of the pixels and size, as a hex id for mtmd bitmaps and prefix matching.
std::string image_content_id(const RgbImage & image);

}  // namespace ecso
