// Conversation checks and chat-template rendering (see conversation.hpp).
#include "ecso/conversation.hpp"
#include "ecso/conversation_render.hpp"

#include "ecso/errors.hpp"
#include "ecso/session_internal.hpp"
#include "ecso/utf8.hpp"
#include "llama.h"

namespace ecso {
namespace {

// Stands in for message i; letters only, so that every built-in template passes it unchanged.
const char * const kSentinelPrefix = "ECSOEDGEMESSAGE";

std::string sentinel(size_t i) {
    std::string s = kSentinelPrefix;
    do {
        s += static_cast<char>('A' + i % 26);
        i /= 26;
    } while (i > 0);
    return s + "END";
}

// A message's parts joined by newlines: a text part takes the newline, two images get one between.
std::vector<PromptPart> joined(const std::vector<PromptPart> & content) {
    std::vector<PromptPart> out;
    for (const PromptPart & part : content) {
        if (!out.empty()) {
            if (part.image == nullptr) {
                out.push_back(part);
                out.back().text = "\n" + part.text;
                continue;
            }
            if (out.back().image == nullptr) {
                out.back().text += "\n";
            } else {
                out.push_back({"\n", false, nullptr, false});
            }
        }
        out.push_back(part);
    }
    return out;
}

}  // namespace

void validate_conversation(const Conversation & messages, uint64_t max_image_pixels) {
    if (messages.empty()) {
        throw ConfigError("the conversation has no message; send at least one message with role 'user'");
    }
    for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage & m = messages[i];
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (m.role != "system" && m.role != "user" && m.role != "assistant") {
            throw ConfigError(where + " has the role '" + m.role + "'; roles are 'system', 'user' and 'assistant'");
        }
        for (size_t k = 0; k < m.content.size(); ++k) {
            const ChatPart & part = m.content[k];
            if (part.image) {
                if (m.role != "user") {
                    throw ConfigError(where + " (role '" + m.role + "') holds an image; images go in user messages");
                }
                try {
                    check_image(*part.image, max_image_pixels);
                } catch (const ImageError & e) {
                    throw ImageError(where + ".content[" + std::to_string(k) + "]: " + e.what());
                }
            } else if (!is_valid_utf8(part.text)) {
                throw ConfigError(where + ".content[" + std::to_string(k) + "] is not valid UTF-8");
            }
        }
    }
    if (messages.back().role != "user") {
        throw ConfigError("the last message (messages[" + std::to_string(messages.size() - 1) + "]) has the role '" +
                          messages.back().role + "'; a conversation is answered after a user message");
    }
}

std::string message_text(const ChatMessage & message) {
    std::string out;
    bool first = true;
    for (const ChatPart & part : message.content) {
        if (!part.image) {
            out += (first ? "" : "\n") + part.text;
            first = false;
        }
    }
    return out;
}

std::vector<PromptPart> render_conversation(const ChatFrame & frame, const std::vector<RenderMessage> & messages) {
    std::vector<std::string> sentinels;
    std::vector<llama_chat_message> chat;
    for (size_t i = 0; i < messages.size(); ++i) {
        sentinels.push_back(sentinel(i));
    }
    for (size_t i = 0; i < messages.size(); ++i) {
        chat.push_back({messages[i].role.c_str(), sentinels[i].c_str()});
    }
    std::vector<char> buf(1024 + 256 * messages.size());
    int32_t n = llama_chat_apply_template(frame.source.c_str(), chat.data(), chat.size(), true, buf.data(),
                                          static_cast<int32_t>(buf.size()));
    if (n > static_cast<int32_t>(buf.size())) {
        buf.resize(static_cast<size_t>(n));
        n = llama_chat_apply_template(frame.source.c_str(), chat.data(), chat.size(), true, buf.data(),
                                      static_cast<int32_t>(buf.size()));
    }
    if (n < 0) {
        throw ConfigError("the chat template '" + frame.template_name + "' could not render the conversation");
    }
    const std::string text(buf.data(), static_cast<size_t>(n));
    std::vector<PromptPart> parts;
    size_t at = 0;
    for (size_t i = 0; i < messages.size(); ++i) {
        const size_t found = text.find(sentinels[i], at);
        // the text before it holds no other message: each is placed once, in order (one scan of
        // the text in all, so a conversation of many messages renders in linear time)
        if (found == std::string::npos || text.substr(at, found - at).find(kSentinelPrefix) != std::string::npos) {
            throw ConfigError("the chat template '" + frame.template_name + "' does not place message " +
                              std::to_string(i) + " (role '" + messages[i].role +
                              "') exactly once, in order; choose another chat_template");
        }
        parts.push_back({text.substr(at, found - at), true, nullptr, true});
        std::vector<PromptPart> content = joined(messages[i].content);
        if (!content.empty()) {
            content.front().boundary = true;
        }
        parts.insert(parts.end(), content.begin(), content.end());
        at = found + sentinels[i].size();
    }
    if (text.find(kSentinelPrefix, at) != std::string::npos) {
        throw ConfigError("the chat template '" + frame.template_name +
                          "' places a message more than once; choose another chat_template");
    }
    parts.push_back({text.substr(at), true, nullptr, true});
    return parts;
}

}  // namespace ecso
