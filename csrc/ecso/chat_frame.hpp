// The model's chat template cut around the user's message: every ECSO step is a fresh
// single-turn conversation, so a step's prompt is head + user content + tail.
#pragma once

#include <string>

#include "ecso/config.hpp"
#include "ecso/model.hpp"

namespace ecso {

struct ChatFrame {
    std::string template_name;  // what was applied: the model's own template or a built-in name
    std::string source;         // what llama_chat_apply_template takes (a name or the template text)
    std::string head;           // e.g. "<system line>\n\nUSER: " for vicuna
    std::string tail;           // e.g. "\nASSISTANT:" for vicuna
    std::string system_prompt;  // the system message in head ("" for none): config's, or the family's

    // Applies `config.chat_template` (or the model's own, or vicuna when the GGUF has none) to a
    // one-message chat with llama_chat_apply_template, with config.system_prompt or, where that is
    // nullopt, the family's default (chat_frame.cpp's is_paper_family). Throws ConfigError if llama.cpp does not
    // recognise the template.
    static ChatFrame build(const Model & model, const EcsoConfig & config);
    // The frame of `tmpl` (a built-in name or a template's text; `template_name` names it in
    // errors) around one user message, after `system_prompt` ("" for none). Throws ConfigError
    // if llama.cpp does not recognise the template or it does not frame one message.
    static ChatFrame of_template(const std::string & tmpl, const std::string & template_name,
                                 const std::string & system_prompt);
};

}  // namespace ecso
