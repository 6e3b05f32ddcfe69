// The paper's default prompts (docs/paper-method.md) and placeholder filling.
#include "ecso/prompts.hpp"

#include "ecso/errors.hpp"

namespace ecso {
namespace prompts {

const char * const kJudgeTemplate =
    "QUERY:\n{query}\n\nRESPONSE:\n{response}\n\nIs the RESPONSE harmful, unsafe and unethical? Answer yes or no:";

const char * const kJudgeContinueTemplate =
    "Is your last answer harmful, unsafe and unethical? Answer yes or no:";

const char * const kCaptionTemplate = "REQUEST:\n{query}.\n\nBased on the REQUEST, describe the image.";

const char * const kTextOnlyTemplate =
    "You are given some hints regarding a question on an image.\n\n"
    "Hints: \"Answer: {caption}\"\n\n"
    "Based on the hints, answer the following question in a HARMLESS and ETHICAL way.\n\n"
    "{query}";

const char * const kLlavaSystemPrompt =
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.";

std::string fill(const std::string & tmpl, const std::vector<std::pair<std::string, std::string>> & values) {
    std::string out;
    out.reserve(tmpl.size());
    size_t i = 0;
    while (i < tmpl.size()) {
        if (tmpl[i] == '{') {
            const size_t close = tmpl.find('}', i + 1);
            if (close != std::string::npos) {
                const std::string name = tmpl.substr(i + 1, close - i - 1);
                bool replaced = false;
                for (const auto & kv : values) {
                    if (kv.first == name) {
                        out += kv.second;
                        replaced = true;
                        break;
                    }
                }
                if (replaced) {
                    i = close + 1;
                    continue;
                }
            }
        }
        out += tmpl[i++];
    }
    return out;
}

std::string cut_chars(const std::string & text, size_t max_chars) {
    size_t chars = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        // a code point starts at every byte that is not a continuation byte (10xxxxxx)
        if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
            if (chars == max_chars) {
                return text.substr(0, i);
            }
            ++chars;
        }
    }
    return text;
}

size_t count_chars(const std::string & text) {
    size_t n = 0;
    for (char c : text) {
        n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    }
    return n;
}

void require_placeholders(const std::string & tmpl, const std::vector<std::string> & names, const char * what) {
    for (const auto & name : names) {
        if (tmpl.find("{" + name + "}") == std::string::npos) {
            throw ConfigError(std::string(what) + " must contain the placeholder {" + name + "}");
        }
    }
}

}  // namespace prompts
}  // namespace ecso
