// A conversation as chat apps send it (OpenAI-style messages: roles system/user/assistant, each
// content a list of text and image parts) and its checks. Public, so it names no llama.cpp type:
// rendering it into prompt parts is conversation_render.hpp's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/image.hpp"

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

}  // namespace ecso
