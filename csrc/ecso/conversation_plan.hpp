// ECSO over a whole conversation (EcsoSession::chat; docs/conversations.md):
//   1. answer the conversation (system message, every turn, every image where it was sent);
//   2. judge the new answer with the paper's judge prompt (the last user message as QUERY, the
//      answer as RESPONSE), with every image of the conversation before it;
//   3. if unsafe, caption each image for the last user message (a caption already made for that
//      image and query is not made again);
//   4. answer the conversation again, eyes closed: no image anywhere, the captions as the hints of
//      the paper's text-only prompt around the last user message.
// A conversation with no image is answered directly unless EcsoConfig::judge_text_only is set.
//
// Between calls, the answer's KV cells and the images' encoder output are kept
// (ConversationCache), so the next turn evaluates only what is new.
#pragma once

#include <string>
#include <vector>

#include "ecso/call_options.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/conversation.hpp"
#include "ecso/conversation_render.hpp"
#include "ecso/conversation_cache.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/guard_judge.hpp"
#include "ecso/result.hpp"

namespace ecso {

class ConversationPlan {
public:
    // `guard`: step 2 on a guard model in place of the self-judge (null: the paper's self-judge).
    ConversationPlan(DecodingEngine & engine, const ChatFrame & frame, ConversationCache & cache,
                     const GuardStep * guard = nullptr)
        : engine_(engine), config_(engine.config()), model_(engine.model()), frame_(frame), cache_(cache),
          guard_(guard) {}

    // The caller holds the call (ActiveCall). `protect` false runs step 1 alone.
    EcsoResult run(const Conversation & messages, const CallOptions & call, bool protect);

private:
    struct Image {
        PromptImage prompt;  // the pixels and their content id
        size_t message = 0;  // where it was sent
        size_t number = 0;   // 1-based, in order of first appearance (repeats share it)
    };

    // The system messages every step's prompt starts with: the conversation's own, or the
    // config's system prompt when it has none.
    std::vector<RenderMessage> system_messages(const Conversation & messages) const;
    // What a rendering of the whole conversation starts with: the config's system prompt when the
    // conversation has no system message, else nothing (its own are in it).
    std::vector<RenderMessage> config_system(const Conversation & messages) const;
    // The conversation as step 1 sees it (images where they were sent).
    Prompt answer_prompt(const Conversation & messages) const;
    // A single-turn prompt after the system messages: `text` with images, placed as configured.
    Prompt image_prompt(const Conversation & messages, const std::vector<const Image *> & images,
                        const std::string & text) const;
    Prompt judge_prompt(const Conversation & messages, const std::string & query, const std::string & response,
                        int32_t judge_tokens) const;
    // Step 4: the conversation without images; `captions[k]` describes image number k + 1.
    Prompt text_only_prompt(const Conversation & messages, const std::string & query,
                            const std::vector<std::string> & captions) const;

    DecodingEngine & engine_;
    const EcsoConfig & config_;
    const Model & model_;
    const ChatFrame & frame_;
    ConversationCache & cache_;
    const GuardStep * guard_;
    std::vector<Image> images_;  // of the current call, one per image part
    std::vector<const Image *> distinct_;  // one per image number
    bool numbered_ = false;                // step 4's hints name each image by its number
};

}  // namespace ecso
