// The paper's prompt wording (defined once, here) and the filling of {placeholders}.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ecso {
namespace prompts {

// Step 2: harm judge. Placeholders: {query}, {response}.
extern const char * const kJudgeTemplate;
// The continue layout's judge question: the paper's question, asked of the answer just given.
extern const char * const kJudgeContinueTemplate;
// Step 3: query-aware image-to-text. Placeholder: {query}.
extern const char * const kCaptionTemplate;
// Step 4: eyes-closed answer from the caption. Placeholders: {query}, {caption}.
extern const char * const kTextOnlyTemplate;
// LLaVA-1.5's vicuna_v1 system line.
extern const char * const kLlavaSystemPrompt;

// Replaces each "{name}" of `tmpl` with its value in one left-to-right pass, so placeholders
// that appear inside the substituted user text are left alone. Unknown names stay literal.
std::string fill(const std::string & tmpl, const std::vector<std::pair<std::string, std::string>> & values);

// The first `max_chars` Unicode code points of valid UTF-8 `text` (the paper cuts the judged
// response by characters, as Python's str slicing does).
std::string cut_chars(const std::string & text, size_t max_chars);

// The number of Unicode code points in valid UTF-8 `text`.
size_t count_chars(const std::string & text);

// Throws ConfigError if `tmpl` lacks a required placeholder. `what` names the template.
void require_placeholders(const std::string & tmpl, const std::vector<std::string> & names, const char * what);

}  // namespace prompts
}  // namespace ecso
