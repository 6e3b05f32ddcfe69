// A conversation rendered through the model's chat template into prompt parts (internal: prompt
// parts carry llama.cpp token ids and mtmd chunks, which the public conversation.hpp leaves out).
// Template text is parsed for special tokens; what the messages say never is, so a message cannot
// inject template tokens or image slots.
#pragma once

#include <string>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/conversation.hpp"
#include "ecso/prompt.hpp"

namespace ecso {

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
