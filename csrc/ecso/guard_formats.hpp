// The prompt formats and output parsers of guard models (Llama Guard 3, Qwen3Guard-Gen,
// ShieldGemma, Granite Guardian) and of a plain yes/no judge, for response moderation: is the
// assistant's answer to the user's query harmful? Text only: no model, no llama.cpp, no Python.
// Sources and the differences from each card: docs/guard-formats.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ecso {

struct GuardVerdict {
    // nullopt: the output is not in the format (never a guess)
    std::optional<bool> unsafe;
    // the categories the guard named, in its own spelling ("S1", "Violent"); empty when it names none
    std::vector<std::string> categories;
    std::string raw;
};

struct GuardFormat {
    // "llama-guard-3", "llama-guard-3-1b", "qwen3guard", "shieldgemma", "granite-guardian", "yes-no"
    std::string name;
    // What the judge generates at most: enough for the longest verdict the format defines, so a
    // regular output ends with end-of-generation first; 1 where the verdict is the first token and
    // the card's model goes on explaining (ShieldGemma).
    int32_t max_tokens = 0;
    // true: user_message() is the content of one user turn, framed by the model's chat template.
    // false: the model's own template adds no turn markers (ShieldGemma), so user_message() is
    // the whole prompt after BOS; tokenize it with special tokens parsed.
    bool chat_turn = true;
    // Text the model's template puts at the start of the assistant turn before the model writes
    // (Qwen3Guard's empty think block); the caller appends it after the generation prompt.
    std::string assistant_prefix;

    // The part of user_message() before the query: the same for every request, so a caller can
    // keep its KV cells.
    std::string head() const;
    // head() + the query + the response + the instruction, as the model's template lays them out.
    std::string user_message(const std::string & query, const std::string & response) const;
    GuardVerdict parse(const std::string & output) const;
    // user_message() in pieces: the format's fixed texts (`fixed`: the card's, which may hold the
    // model's control tokens) and the query's and the response's text. parts[0] is head().
    struct Part {
        std::string text;
        bool fixed = true;
    };
    std::vector<Part> message_parts(const std::string & query, const std::string & response) const;

    // The table in guard_formats.cpp builds these.
    struct Layout {
        std::string head;     // up to the query
        std::string between;  // between the query and the response
        std::string tail;     // after the response
        bool strip = false;   // the template strips the query and the response (Llama Guard)
    };
    Layout layout;
    std::optional<bool> (*parse_output)(const std::string & output, std::vector<std::string> & categories) = nullptr;
};

// Throws ConfigError naming the bad value and listing the valid names.
const GuardFormat & guard_format(const std::string & name);
const std::vector<std::string> & guard_format_names();

}  // namespace ecso
