// The continue-layout judge and incremental judging (see continue_judge.hpp).
#include "ecso/continue_judge.hpp"

#include "ecso/conversation_render.hpp"
#include "ecso/errors.hpp"
#include "ecso/prompts.hpp"
#include "ecso/verdict.hpp"

namespace ecso {
namespace {

bool ends_sentence(const std::string & piece) {
    for (auto it = piece.rbegin(); it != piece.rend(); ++it) {
        if (*it == '\n') {
            return true;
        }
        if (*it != ' ' && *it != '\t' && *it != '\r') {
            return *it == '.' || *it == '!' || *it == '?';
        }
    }
    return false;
}

}  // namespace

ContinueJudge::ContinueJudge(DecodingEngine & engine, const ChatFrame & frame, std::vector<PromptPart> answer_parts,
                             const std::string & query)
    : engine_(engine), config_(engine.config()), answer_parts_(std::move(answer_parts)) {
    // The template's text between an assistant message and the next user message, and after it:
    // the last three parts of a rendered [user, assistant, user] conversation.
    const std::string question = prompts::fill(config_.judge_continue_template, {{"query", query}});
    const std::vector<RenderMessage> turns = {
        {"user", {{"x", false, nullptr, false}}},
        {"assistant", {{"y", false, nullptr, false}}},
        {"user", {{question, false, nullptr, false}}},
    };
    std::vector<PromptPart> parts = render_conversation(frame, turns);
    question_parts_.assign(parts.end() - 3, parts.end());
    question_parts_.front().boundary = true;  // the check's own batch starts after the answer
    const Model & model = engine_.model();
    question_cells_ = prompt({}).n_cells() - Prompt::build_parts(model, answer_parts_).n_cells();
}

std::vector<PromptPart> ContinueJudge::parts_with_answer(const std::vector<llama_token> & answer_tokens) const {
    std::vector<PromptPart> parts = answer_parts_;
    if (!answer_tokens.empty()) {
        PromptPart answer;
        answer.tokens = answer_tokens;
        answer.token_batches = true;
        answer.boundary = true;
        parts.push_back(std::move(answer));
    }
    return parts;
}

Prompt ContinueJudge::answer_prompt(const std::vector<llama_token> & answer_tokens) const {
    return Prompt::build_parts(engine_.model(), parts_with_answer(answer_tokens));
}

Prompt ContinueJudge::prompt(const std::vector<llama_token> & answer_tokens) const {
    std::vector<PromptPart> parts = parts_with_answer(answer_tokens);
    parts.insert(parts.end(), question_parts_.begin(), question_parts_.end());
    return Prompt::build_parts(engine_.model(), parts);
}

StepRecord ContinueJudge::check(const std::string & name, const std::vector<llama_token> & answer_tokens,
                                int32_t max_tokens, bool restore, std::optional<double> & p_yes) {
    const Prompt p = prompt(answer_tokens);
    const int32_t room = static_cast<int32_t>(engine_.n_ctx()) - p.n_cells();
    StepRecord rec = engine_.run_step(name.c_str(), DecodingEngine::kSeqJudge, p, std::min(max_tokens, room), {},
                                      nullptr);
    if (max_tokens == 0) {
        // the logits rule: the prompt's last logits are still in the context
        p_yes = engine_.p_yes();
        rec.p_yes = p_yes;
        rec.text = *p_yes > 0.5 ? "yes" : "no";
    }
    engine_.kv().drop(DecodingEngine::kSeqJudge);
    if (restore && !config_.reuse_kv) {
        // The reference path evaluated the check from an empty cache: put step 1's sequence back,
        // each answer token in a batch of its own as generation decoded it.
        engine_.run_step("answer", DecodingEngine::kSeqAnswer, answer_prompt(answer_tokens), 0, {}, nullptr);
    }
    return rec;
}

bool ContinueJudge::check_due(const JudgedAnswer & out, size_t last_checked) const {
    const size_t n = out.pieces.size();
    if (n <= last_checked) {
        return false;
    }
    // The first check (of either rule) closes the first chunk, which may be shorter: nothing is
    // streamed before it.
    const auto chunk = static_cast<size_t>(config_.judge_chunk_tokens);
    const auto first = static_cast<size_t>(config_.judge_first_chunk_tokens);
    const size_t due = out.checks.empty() && first > 0 ? first : chunk;
    return (chunk > 0 && n - last_checked >= due) || (config_.judge_chunk_sentences && ends_sentence(out.pieces.back()));
}

JudgedAnswer ContinueJudge::run(const Prompt & p1, int32_t max_tokens, SinkWriter & writer) {
    JudgedAnswer out;
    const bool incremental = config_.judge_mode == JudgeMode::Incremental;
    size_t last_checked = 0;
    auto release = [&](size_t upto) {
        for (size_t i = out.released_tokens; i < upto; ++i) {
            writer.write(out.pieces[i]);
            out.released_text += out.pieces[i];
        }
        out.released_tokens = std::max(out.released_tokens, upto);
    };
    const DecodingEngine::TokenHook hook = [&](const StepRecord & so_far, bool whole_chars) {
        if (!whole_chars || !check_due(out, last_checked)) {
            return true;
        }
        last_checked = out.pieces.size();
        std::optional<double> p;
        out.checks.push_back(check("check_" + std::to_string(out.checks.size() + 1), so_far.tokens, 0, true, p));
        out.p_yes = p;
        out.verdict_text = out.checks.back().text;
        out.judged_unsafe = *p > config_.judge_check_threshold;
        // a forced verdict decides at the first check, as it decides the paper's one judge
        out.unsafe = config_.verdict_override.value_or(out.judged_unsafe);
        if (out.unsafe) {
            return false;
        }
        release(so_far.tokens.size());
        return true;
    };
    out.answer = engine_.run_step("answer", DecodingEngine::kSeqAnswer, p1, max_tokens, {}, &out.pieces, nullptr, 0,
                                  incremental ? &hook : nullptr);
    if (out.answer.stop_reason == "judge") {
        return out;
    }
    // The final check on the whole answer decides, under the configured verdict rule.
    engine_.complete_answer(DecodingEngine::kSeqAnswer, out.answer);
    const int32_t judge_tokens = judge_token_limit(config_);
    std::optional<double> p;
    out.checks.push_back(check("judge", out.answer.tokens, judge_tokens, false, p));
    out.p_yes = p;
    out.verdict_text = out.checks.back().text;
    out.judged_unsafe = judge_verdict(out.verdict_text, config_.verdict_rule);
    out.unsafe = config_.verdict_override.value_or(out.judged_unsafe);
    if (!out.unsafe) {
        release(out.pieces.size());
    }
    return out;
}

}  // namespace ecso
