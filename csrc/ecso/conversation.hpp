// A conversation as chat apps send it (OpenAI-style messages: roles system/user/assistant, each
// content a list of text and image parts), its checks, and its rendering through the model's chat
// template into prompt parts. Template text is parsed for special tokens; what the messages say
// never is, so a message cannot inject template tokens or image slots.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/image.hpp"
#include "ecso/prompt.hpp"

namespace ecso {

struct ChatPart {
    std::string text;                       // a text part, when `image` is null
    std::shared_ptr<const RgbImage> image;  // an image part
};

struct ChatMessage {
    std::string role;  // "system", "user" or "assistant"
    std::vector<ChatPart> content;
};

using Conversation = std::vector<ChatMessage>;

// ConfigError naming the message (messages[i]) for: no message, an unknown role, a last message
// that is not the user's, an image outside a user message, text that is not UTF-8. ImageError
// for an image the core cannot take.
void validate_conversation(const Conversation & messages, uint64_t max_image_pixels);

// The text of a message's text parts, joined by newlines.
std::string message_text(const ChatMessage & message);

// A message ready to render: its role and its content as prompt parts (text or image).
struct RenderMessage {
    std::string role;
    std::vector<PromptPart> content;
};

// The parts of `messages` framed by `frame`'s chat template (llama_chat_apply_template, with the
// assistant prefix added). Adjacent content parts are joined by a newline, as the paper's prompts
// join the image and the query. Each template segment and each message starts a batch, so a
// later prompt that shares whole messages with a cached one reuses them. ConfigError when the
// template does not place every message exactly once.
std::vector<PromptPart> render_conversation(const ChatFrame & frame, const std::vector<RenderMessage> & messages);

}  // namespace ecso
