// Chat-template framing of single-turn prompts via llama_chat_apply_template.
#include "ecso/chat_frame.hpp"

#include <optional>
#include <vector>

#include "ecso/errors.hpp"
#include "ecso/prompts.hpp"
#include "llama.h"

namespace ecso {
namespace {

// Stands in for the user's message; it must pass through every built-in template unchanged.
const char * const kSentinel = "ECSOEDGEUSERMESSAGE";

std::string builtin_names() {
    std::vector<const char *> names(128);
    const int32_t n = llama_chat_builtin_templates(names.data(), names.size());
    std::string out;
    for (int32_t i = 0; i < n && i < static_cast<int32_t>(names.size()); ++i) {
        out += (i ? ", " : "") + std::string(names[static_cast<size_t>(i)]);
    }
    return out;
}

// The paper's family: LLaVA-1.5 (and 1.6, its successor), whose projector llama.cpp calls "mlp"
// ("mlp_norm": the same with a Yi-style norm), framed by vicuna_v1's turns. Its system line belongs
// to that conversation format, so a LLaVA GGUF with another template (LLaVA-1.6 Mistral's
// [INST] turns) gets that template's own default instead. `text` is the one-message chat rendered
// with no system message: vicuna's ends in "USER: <message>\nASSISTANT:".
bool is_paper_family(const Model & model, const std::string & text) {
    const std::string & type = model.projector_info().projector_type;
    const std::string vicuna_turns = "USER: " + std::string(kSentinel) + "\nASSISTANT:";
    return (type == "mlp" || type == "mlp_norm") && text.size() >= vicuna_turns.size() &&
           text.compare(text.size() - vicuna_turns.size(), vicuna_turns.size(), vicuna_turns) == 0;
}

}  // namespace

namespace {

// The one-message chat rendered with `tmpl` (a built-in name or a template text), or nullopt when
// llama.cpp does not recognise the template.
std::optional<std::string> render(const std::string & tmpl, const std::string & system) {
    std::vector<llama_chat_message> chat;
    if (!system.empty()) {
        chat.push_back({"system", system.c_str()});
    }
    chat.push_back({"user", kSentinel});
    std::vector<char> buf(4096 + system.size() * 2);
    int32_t n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), true, buf.data(),
                                          static_cast<int32_t>(buf.size()));
    if (n > static_cast<int32_t>(buf.size())) {
        buf.resize(static_cast<size_t>(n));
        n = llama_chat_apply_template(tmpl.c_str(), chat.data(), chat.size(), true, buf.data(),
                                      static_cast<int32_t>(buf.size()));
    }
    if (n < 0) {
        return std::nullopt;
    }
    return std::string(buf.data(), static_cast<size_t>(n));
}

}  // namespace

ChatFrame ChatFrame::of_template(const std::string & tmpl, const std::string & template_name,
                                 const std::string & system_prompt) {
    ChatFrame frame;
    frame.template_name = template_name;
    frame.source = tmpl;
    frame.system_prompt = system_prompt;
    const auto text = render(tmpl, system_prompt);
    if (!text) {
        throw ConfigError("llama.cpp does not recognise the chat template " +
                          (template_name == "model" ? std::string("stored in the text model")
                                                    : "'" + template_name + "'") +
                          ". Set EcsoConfig.chat_template to one of llama.cpp's built-in names: " + builtin_names());
    }
    const size_t at = text->find(kSentinel);
    if (at == std::string::npos || text->find(kSentinel, at + 1) != std::string::npos) {
        throw ConfigError("the chat template '" + template_name +
                          "' does not place the user message exactly once; choose another chat_template");
    }
    frame.head = text->substr(0, at);
    frame.tail = text->substr(at + std::string(kSentinel).size());
    if (frame.tail.empty()) {
        throw ConfigError("the chat template '" + template_name +
                          "' has no assistant prefix after the user message; choose another chat_template");
    }
    return frame;
}

ChatFrame ChatFrame::build(const Model & model, const EcsoConfig & config) {
    std::string tmpl = config.chat_template;
    std::string name;
    if (tmpl.empty()) {
        tmpl = model.own_chat_template();
        name = tmpl.empty() ? "vicuna" : "model";
        if (tmpl.empty()) {
            tmpl = "vicuna";  // LLaVA-1.5 GGUFs often carry no template; LLaVA-1.5 is vicuna_v1
        }
    } else {
        name = config.chat_template.size() < 40 ? config.chat_template : "custom";
    }
    // Step 1's frame decides the family default: LLaVA's line needs vicuna's turns (above).
    std::string system = config.system_prompt.value_or("");
    if (!config.system_prompt) {
        const auto plain = render(tmpl, "");
        if (plain && is_paper_family(model, *plain)) {
            system = prompts::kLlavaSystemPrompt;
        }
    }
    return of_template(tmpl, name, system);
}

}  // namespace ecso
