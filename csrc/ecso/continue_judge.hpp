// Steps 1 and 2 when the judge continues step 1's own conversation (judge_layout "continue"), and
// incremental judging over it (judge_mode "incremental"). The judge's prompt is step 1's prompt,
// the answer's tokens exactly as generated, the end of the assistant's turn and a new user turn
// asking the question: it shares every cell step 1 filled, so only the question is evaluated.
// Incremental checks fork step 1's sequence at chunk boundaries while it decodes, read the
// logits rule, release text judged safe to the stream, and stop step 1 at the first unsafe
// verdict. docs/judge-modes.md says what the answer then is and why reuse stays exact.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/prompt.hpp"
#include "ecso/result.hpp"
#include "ecso/session_internal.hpp"

namespace ecso {

// What steps 1 and 2 leave for the rest of the request.
struct JudgedAnswer {
    StepRecord answer;                  // step 1 (stopped early: stop_reason "judge")
    std::vector<StepRecord> checks;     // incremental checks ("check_1", ...) and the judge
    std::vector<std::string> pieces;    // step 1's text pieces, one per token (and the tail)
    size_t released_tokens = 0;         // step 1's tokens whose text reached the stream
    std::string released_text;          // their text, as streamed before stripping
    std::string verdict_text;
    std::optional<double> p_yes;        // the deciding check's, under the logits rule
    bool judged_unsafe = false;
    bool unsafe = false;                // with verdict_override applied
};

class ContinueJudge {
public:
    // `answer_parts`: step 1's prompt (the chat frame's tail included).
    ContinueJudge(DecodingEngine & engine, const ChatFrame & frame, std::vector<PromptPart> answer_parts,
                  const std::string & query);

    // The judge's prompt after the answer's first tokens.
    Prompt prompt(const std::vector<llama_token> & answer_tokens) const;
    // Step 1's prompt followed by the answer's tokens, each a batch of its own, as generated.
    Prompt answer_prompt(const std::vector<llama_token> & answer_tokens) const;
    // KV cells the turn's end and the question add after the answer.
    int32_t question_cells() const { return question_cells_; }

    // Steps 1 and 2: the answer, held back except for what checks released to `writer`.
    JudgedAnswer run(const Prompt & p1, int32_t max_tokens, SinkWriter & writer);

private:
    std::vector<PromptPart> parts_with_answer(const std::vector<llama_token> & answer_tokens) const;
    StepRecord check(const std::string & name, const std::vector<llama_token> & answer_tokens,
                     int32_t max_tokens, bool restore, std::optional<double> & p_yes);
    bool check_due(const JudgedAnswer & out, size_t last_checked) const;

    DecodingEngine & engine_;
    const EcsoConfig & config_;
    std::vector<PromptPart> answer_parts_;
    std::vector<PromptPart> question_parts_;  // the turn's end, the question, the assistant prefix
    int32_t question_cells_ = 0;
};

}  // namespace ecso
