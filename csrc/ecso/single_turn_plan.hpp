// The paper's plan for one image and one query (EcsoSession::run, answer, judge). Step 1 encodes
// the image once; steps 2 and 3 start from a copy of the [template head, image] prefix step 1
// evaluated; step 4 starts from the shared template head.
//
// Every step's generation is capped by the room its context has left, and a request whose steps
// cannot all fit is refused before step 1 (see run()): a run whose first step fits returns.
#pragma once

#include <string>

#include "ecso/call_options.hpp"
#include "ecso/chat_frame.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/guard_judge.hpp"
#include "ecso/image.hpp"
#include "ecso/prompt.hpp"
#include "ecso/result.hpp"
#include "ecso/session_internal.hpp"

namespace ecso {

class ContinueJudge;

class SingleTurnPlan {
public:
    // `guard`: step 2 on a guard model in place of the self-judge (null: the paper's self-judge).
    SingleTurnPlan(DecodingEngine & engine, const ChatFrame & frame, const GuardStep * guard = nullptr)
        : engine_(engine), config_(engine.config()), model_(engine.model()), frame_(frame), guard_(guard) {}

    // The ECSO request (`protect`) or step 1 alone. The caller holds the call (ActiveCall).
    EcsoResult run(const RgbImage & image, const std::string & query, const CallOptions & call, bool protect);
    // Step 2 alone on a given response.
    EcsoResult judge(const RgbImage & image, const std::string & query, const std::string & response);

private:
    // The judge's prompt with an empty quote: what the judge needs before any of the answer.
    Prompt judge_prompt_without_quote(const std::string & query, const RgbImage & image) const;
    // Refuses, before step 1, a request whose later steps could not fit the context at all.
    // `judge_empty` null: a guard model judges, in a context of its own.
    void check_steps_fit(const Prompt & answer, const Prompt * judge_empty, const Prompt * caption,
                         const Prompt * text_only_empty) const;
    // The judge's prompt quoting as much of `response` as response_cut_chars and the context allow.
    Prompt judge_prompt(const std::string & query, const std::string & response, const RgbImage & image,
                        bool placeholder, int32_t judge_tokens) const;
    Prompt image_prompt(const std::string & text, const RgbImage & image, bool placeholder) const;
    std::vector<PromptPart> image_parts(const std::string & text, const PromptImage * image) const;
    // Steps 1-4 when the judge continues step 1's conversation (judge_layout "continue",
    // judge_mode "incremental"); p3 and p4_empty are set when the unsafe branch may run.
    EcsoResult run_continued(ContinueJudge & judge, const Prompt & p1, const std::string & query,
                             const CallOptions & call, const Prompt * p3, const Prompt * p4_empty, EcsoResult result,
                             Clock::time_point t0);
    // Steps 3 and 4, streamed through `writer`; step 4 continues `released_tokens`, the answer's
    // text already streamed (incremental judging), or starts afresh when there are none.
    void finish_unsafe(const std::string & query, int32_t max_tokens, const Prompt & p3, const Prompt & p4_empty,
                       const std::vector<llama_token> & released_tokens, const std::string & released_text,
                       SinkWriter & writer, EcsoResult & result);

    DecodingEngine & engine_;
    const EcsoConfig & config_;
    const Model & model_;
    const ChatFrame & frame_;
    const GuardStep * guard_;
    std::string image_id_;  // content hash of the current request's image
};

}  // namespace ecso
