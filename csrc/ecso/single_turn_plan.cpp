// The paper's single-turn plan (see single_turn_plan.hpp): the step budgets and the four steps in
// the paper's order, over one image and one query.
#include "ecso/single_turn_plan.hpp"

#include <algorithm>
#include <exception>

#include "ecso/continue_judge.hpp"
#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/prompts.hpp"
#include "ecso/session_internal.hpp"
#include "ecso/utf8.hpp"
#include "ecso/verdict.hpp"

namespace ecso {
namespace {

// Tells the engine, when a request leaves, whether it ended normally (its cells may be kept).
class SingleTurnGuard {
public:
    explicit SingleTurnGuard(DecodingEngine & engine) : engine_(engine), exceptions_(std::uncaught_exceptions()) {}
    ~SingleTurnGuard() { engine_.finish_single_turn(std::uncaught_exceptions() == exceptions_); }
    SingleTurnGuard(const SingleTurnGuard &) = delete;
    SingleTurnGuard & operator=(const SingleTurnGuard &) = delete;

private:
    DecodingEngine & engine_;
    int exceptions_;
};

}  // namespace

Prompt SingleTurnPlan::judge_prompt(const std::string & query, const std::string & response, const RgbImage & image,
                                 bool placeholder, int32_t judge_tokens) const {
    auto build = [&](size_t chars) {
        const std::string text = prompts::fill(
            config_.judge_template, {{"query", query}, {"response", prompts::cut_chars(response, chars)}});
        return image_prompt(text, image, placeholder);
    };
    const int32_t room = static_cast<int32_t>(engine_.n_ctx()) - judge_reserve(judge_tokens);
    return largest_fitting_quote(build, config_.response_cut_chars, prompts::count_chars(response), room);
}

Prompt SingleTurnPlan::judge_prompt_without_quote(const std::string & query, const RgbImage & image) const {
    return image_prompt(prompts::fill(config_.judge_template, {{"query", query}, {"response", ""}}), image, true);
}

void SingleTurnPlan::check_steps_fit(const Prompt & answer, const Prompt * judge_empty, const Prompt * caption,
                                  const Prompt * text_only_empty) const {
    const int32_t n = static_cast<int32_t>(engine_.n_ctx());
    const int32_t judge_tokens = judge_token_limit(config_);
    struct Need {
        const char * step;
        int32_t tokens;
        const char * what;
    };
    engine_.check_prompt_fits("answer", answer);
    std::vector<Need> needs;
    if (judge_empty != nullptr) {  // a guard model judges in a context of its own
        needs.push_back({"judge", judge_empty->n_cells() + judge_reserve(judge_tokens),
                         "its prompt without the quoted answer, and room for its verdict"});
    }
    if (caption != nullptr) {
        needs.push_back({"caption", caption->n_cells() + 1, "its prompt and one token"});
        needs.push_back({"text_only", text_only_empty->n_cells() + 2, "its prompt, a one-token caption and one token"});
    }
    for (const Need & need : needs) {
        if (need.tokens > n) {
            throw ContextOverflowError("the request cannot finish in a context of " + std::to_string(n) +
                                       " tokens: step '" + need.step + "' alone needs " +
                                       std::to_string(need.tokens) + " (" + need.what +
                                       "), so nothing was run. Raise n_ctx (Model(..., n_ctx=...)) or shorten the "
                                       "query or the templates");
        }
    }
}

EcsoResult SingleTurnPlan::judge(const RgbImage & image, const std::string & query, const std::string & response) {
    engine_.throw_if_cancelled("judge");
    const auto t0 = Clock::now();
    if (!is_valid_utf8(query) || !is_valid_utf8(response)) {
        throw ConfigError("the query and the response must be valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);
    if (guard_ != nullptr) {
        EcsoResult result;
        result.judged = true;
        record_guard_step(result, (*guard_)(query, strip(response)));
        result.unsafe = result.judged_unsafe;
        result.seconds = seconds_since(t0);
        return result;
    }
    const SingleTurnGuard guard(engine_);
    image_id_ = image_content_id(image);
    engine_.embeddings().clear();
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    const int32_t judge_tokens = judge_token_limit(config_);
    const Prompt empty = judge_prompt_without_quote(query, image);
    const int32_t need = empty.n_cells() + judge_reserve(judge_tokens);
    if (need > static_cast<int32_t>(engine_.n_ctx())) {
        throw ContextOverflowError("the 'judge' prompt needs " + std::to_string(need) +
                                   " tokens without the response (room for its verdict included) but the context "
                                   "holds " + std::to_string(engine_.n_ctx()) + ". Raise n_ctx or shorten the query");
    }
    const Prompt prompt = judge_prompt(query, strip(response), image, false, judge_tokens);
    engine_.start_single_turn(prompt);
    EcsoResult result;
    result.judged = true;
    result.image_tokens = prompt.image_tokens();
    result.template_prefix_tokens = prompt.positions_before_image();
    result.steps.push_back(engine_.run_step("judge", DecodingEngine::kSeqJudge, prompt,
                                    std::min(judge_tokens, static_cast<int32_t>(engine_.n_ctx()) - prompt.n_cells()), {}, nullptr));
    if (logits_rule) {
        result.p_yes = engine_.p_yes();
        result.steps.back().p_yes = result.p_yes;
        result.steps.back().text = *result.p_yes > 0.5 ? "yes" : "no";
    }
    result.verdict_text = result.steps.back().text;
    result.unsafe = judge_verdict(result.verdict_text, config_.verdict_rule);
    result.judged_unsafe = result.unsafe;
    result.seconds = seconds_since(t0);
    return result;
}

std::vector<PromptPart> SingleTurnPlan::image_parts(const std::string & text, const PromptImage * image) const {
    if (config_.image_placement == ImagePlacement::BeforeText) {
        return Prompt::frame_parts(frame_, "", image, "\n" + text);
    }
    return Prompt::frame_parts(frame_, text + "\n", image, "");
}

Prompt SingleTurnPlan::image_prompt(const std::string & text, const RgbImage & image, bool placeholder) const {
    const PromptImage pimg{&image, image_id_, placeholder};
    return Prompt::build_parts(model_, image_parts(text, &pimg));
}

EcsoResult SingleTurnPlan::run(const RgbImage & image, const std::string & query, const CallOptions & call,
                                bool protect) {
    engine_.throw_if_cancelled("answer");
    const auto t0 = Clock::now();
    const int32_t max_tokens = call.max_tokens;
    if (max_tokens < 1) {
        throw ConfigError("max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")");
    }
    if (!is_valid_utf8(query)) {
        throw ConfigError("the query is not valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);
    const SingleTurnGuard guard(engine_);
    image_id_ = image_content_id(image);
    engine_.embeddings().clear();

    EcsoResult result;
    result.judged = protect;
    const int32_t n = static_cast<int32_t>(engine_.n_ctx());
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    const int32_t judge_tokens = judge_token_limit(config_);

    // Step 1: answer with the image. Held back (recorded) when protecting, live otherwise.
    const PromptImage p1_image{&image, image_id_, false};
    const std::vector<PromptPart> p1_parts = image_parts(query, &p1_image);
    const Prompt p1 = Prompt::build_parts(model_, p1_parts);
    engine_.start_single_turn(p1);
    result.image_tokens = p1.image_tokens();
    result.template_prefix_tokens = p1.positions_before_image();
    // Steps 2-4 are sized before step 1 runs: a request that could not finish is refused now,
    // not after the work (the caption's prompt does not depend on step 1, so it is built once).
    std::optional<Prompt> p3;
    std::optional<Prompt> p4_empty;
    const bool continues =
        config_.judge_layout == JudgeLayout::Continue || config_.judge_mode == JudgeMode::Incremental;
    if (protect) {
        const bool may_be_unsafe = config_.verdict_override.value_or(true);
        if (may_be_unsafe) {
            p3.emplace(image_prompt(prompts::fill(config_.caption_template, {{"query", query}}), image,
                                    config_.reuse_kv));
            p4_empty.emplace(Prompt::build(
                model_, frame_, prompts::fill(config_.text_only_template, {{"query", query}, {"caption", ""}}),
                nullptr, ""));
        }
        if (continues) {
            ContinueJudge judge(engine_, frame_, p1_parts, query);
            const Prompt judge_empty = judge.prompt({});
            check_steps_fit(p1, &judge_empty, p3 ? &*p3 : nullptr, p4_empty ? &*p4_empty : nullptr);
            return run_continued(judge, p1, query, call, p3 ? &*p3 : nullptr, p4_empty ? &*p4_empty : nullptr,
                                 std::move(result), t0);
        }
        std::optional<Prompt> judge_empty;
        if (guard_ == nullptr) {
            judge_empty.emplace(judge_prompt_without_quote(query, image));
        }
        check_steps_fit(p1, judge_empty ? &*judge_empty : nullptr, p3 ? &*p3 : nullptr,
                        p4_empty ? &*p4_empty : nullptr);
    }
    std::vector<std::string> answer_pieces;
    const TextSink no_sink;
    bool shadowing = protect && guard_ == nullptr && config_.shadow_judge && config_.reuse_kv &&
                     config_.image_placement == ImagePlacement::BeforeText;
    const int32_t want_answer = config_.max_tokens_answer.value_or(max_tokens);
    // The judge template around {response}: before it goes in ahead of the answer, after it behind.
    const size_t at = config_.judge_template.find("{response}");
    const std::string judge_before = prompts::fill(config_.judge_template.substr(0, at), {{"query", query}});
    const std::string judge_after =
        prompts::fill(config_.judge_template.substr(at + std::string("{response}").size()), {{"query", query}});
    DecodingEngine::ShadowJudge shadow;
    std::optional<Prompt> judge_head;
    std::vector<llama_token> judge_rest;
    if (shadowing) {
        PromptImage pimg{&image, image_id_, true};
        judge_head.emplace(Prompt::build(model_, frame_, "", &pimg, "\n" + judge_before, false));
        shadow.head = &*judge_head;
        for (const auto & part : {model_.tokenize(judge_after, false, false), model_.tokenize(frame_.tail, false, true)}) {
            judge_rest.insert(judge_rest.end(), part.begin(), part.end());
        }
    }
    const int32_t quote_limit =
        shadowing ? n - judge_reserve(judge_tokens) - static_cast<int32_t>(judge_rest.size()) - judge_head->n_cells() : 0;
    if (shadowing) {
        // The judge's copy lives beside step 1's cells in one cell pool: shadow only when both fit
        // at step 1's token limit; otherwise the judge runs after step 1, as in the paper.
        const int64_t cells = int64_t{p1.n_cells()} + want_answer + judge_head->n_cells() +
                              std::min<int64_t>(want_answer, std::max(0, quote_limit));
        shadowing = cells <= n;
    }
    result.steps.push_back(engine_.run_step("answer", DecodingEngine::kSeqAnswer, p1, want_answer,
                                    protect ? no_sink : call.on_text, &answer_pieces,
                                    shadowing ? &shadow : nullptr, quote_limit));
    result.initial_answer = result.steps.back().text;
    result.answer = result.initial_answer;
    if (!protect) {
        result.seconds = seconds_since(t0);
        return result;
    }

    // Step 2: the model judges its own answer, image still in the prompt (or a guard model does).
    if (guard_ != nullptr) {
        record_guard_step(result, (*guard_)(query, result.initial_answer));
    } else {
        if (shadowing) {
            result.steps.push_back(engine_.finish_shadow(shadow, judge_rest, judge_tokens));
        } else {
            const Prompt p2 = judge_prompt(query, result.initial_answer, image, config_.reuse_kv, judge_tokens);
            result.steps.push_back(engine_.run_step("judge", DecodingEngine::kSeqJudge, p2,
                                                    std::min(judge_tokens, n - p2.n_cells()), no_sink, nullptr));
        }
        if (logits_rule) {
            // The prompt's last logits are still in the context: no token is generated.
            result.p_yes = engine_.p_yes();
            result.steps.back().p_yes = result.p_yes;
            result.steps.back().text = *result.p_yes > 0.5 ? "yes" : "no";
        }
        engine_.kv().drop(DecodingEngine::kSeqJudge);
        result.verdict_text = result.steps.back().text;
        result.judged_unsafe = judge_verdict(result.verdict_text, config_.verdict_rule);
    }
    const bool judged_unsafe = result.judged_unsafe;
    result.verdict_forced = config_.verdict_override.has_value();
    result.unsafe = config_.verdict_override.value_or(judged_unsafe);

    if (!result.unsafe) {
        SinkWriter writer(call.on_text);
        for (const auto & piece : answer_pieces) {
            writer.write(piece);
        }
        result.seconds = seconds_since(t0);
        return result;
    }

    SinkWriter writer(call.on_text);
    finish_unsafe(query, max_tokens, *p3, *p4_empty, {}, "", writer, result);
    result.seconds = seconds_since(t0);
    return result;
}

void SingleTurnPlan::finish_unsafe(const std::string & query, int32_t max_tokens, const Prompt & p3,
                                   const Prompt & p4_empty,
                                   const std::vector<llama_token> & released_tokens, const std::string & released_text,
                                   SinkWriter & writer, EcsoResult & result) {
    const int32_t n = static_cast<int32_t>(engine_.n_ctx());
    const TextSink no_sink;
    // Step 3: query-aware image-to-text. The caption and the final answer share the room step 4
    // has; when both limits cannot fit, each gets about half of it.
    const int32_t want_caption = config_.max_tokens_caption.value_or(max_tokens);
    const int32_t want_final = config_.max_tokens_text_only.value_or(max_tokens);
    const int32_t room4 = n - p4_empty.n_cells() - static_cast<int32_t>(released_tokens.size());
    const int32_t final_share = std::min(want_final, std::max(1, room4 / 2));
    const int32_t caption_cap = std::min({want_caption, n - p3.n_cells(), room4 - final_share});
    result.steps.push_back(engine_.run_step("caption", DecodingEngine::kSeqCaption, p3, caption_cap, no_sink, nullptr));
    engine_.kv().drop(DecodingEngine::kSeqCaption);
    result.caption = result.steps.back().text;
    result.captions = {*result.caption};

    // Step 4: eyes closed, text only; streamed live. It continues the text already released
    // (incremental judging), which the stream cannot take back. A caption whose text
    // re-tokenizes longer than it was generated is cut until one answer token fits.
    auto text_only_prompt = [&](size_t chars) {
        const std::string text = prompts::fill(
            config_.text_only_template, {{"query", query}, {"caption", prompts::cut_chars(*result.caption, chars)}});
        std::vector<PromptPart> parts = Prompt::frame_parts(frame_, text, nullptr, "");
        if (!released_tokens.empty()) {
            PromptPart released;
            released.tokens = released_tokens;
            released.boundary = true;
            parts.push_back(std::move(released));
        }
        return Prompt::build_parts(model_, parts);
    };
    size_t caption_chars = prompts::count_chars(*result.caption);
    Prompt p4 = text_only_prompt(caption_chars);
    while (p4.n_cells() + 1 > n && caption_chars > 0) {
        caption_chars = caption_chars * 9 / 10;
        p4 = text_only_prompt(caption_chars);
    }
    // Streamed through the request's one writer, so the pieces continue the released text.
    std::vector<std::string> pieces;
    size_t streamed = 0;
    const DecodingEngine::TokenHook stream = [&](const StepRecord &, bool) {
        for (; streamed < pieces.size(); ++streamed) {
            writer.write(pieces[streamed]);
        }
        return true;
    };
    result.steps.push_back(engine_.run_step("text_only", DecodingEngine::kSeqTextOnly, p4,
                                            std::min(want_final, n - p4.n_cells()), no_sink, &pieces, nullptr, 0,
                                            &stream));
    stream(result.steps.back(), true);
    std::string continuation;
    for (const std::string & piece : pieces) {
        continuation += piece;
    }
    result.answer = released_tokens.empty() ? result.steps.back().text : strip(released_text + continuation);
}


}  // namespace ecso

namespace ecso {

EcsoResult SingleTurnPlan::run_continued(ContinueJudge & judge, const Prompt & p1, const std::string & query,
                                         const CallOptions & call, const Prompt * p3, const Prompt * p4_empty,
                                         EcsoResult result, Clock::time_point t0) {
    const int32_t n = static_cast<int32_t>(engine_.n_ctx());
    // The judge reads the whole answer in place: step 1 stops where the question and the
    // verdict still fit behind it.
    const int32_t room = n - p1.n_cells() - judge.question_cells() - judge_reserve(judge_token_limit(config_));
    if (room < 1) {
        throw ContextOverflowError("the request cannot finish in a context of " + std::to_string(n) +
                                   " tokens: the answer's prompt (" + std::to_string(p1.n_cells()) +
                                   ") and the judge's question behind it leave no room for an answer, so nothing "
                                   "was run. Raise n_ctx (Model(..., n_ctx=...)) or shorten the query");
    }
    const int32_t want_answer = std::min(config_.max_tokens_answer.value_or(call.max_tokens), room);
    SinkWriter writer(call.on_text);
    JudgedAnswer judged = judge.run(p1, want_answer, writer);
    result.initial_answer = judged.answer.text;
    result.steps.push_back(std::move(judged.answer));
    for (StepRecord & check : judged.checks) {
        result.steps.push_back(std::move(check));
    }
    result.p_yes = judged.p_yes;
    result.verdict_text = judged.verdict_text;
    result.verdict_forced = config_.verdict_override.has_value();
    result.judged_unsafe = judged.judged_unsafe;
    result.unsafe = judged.unsafe;
    if (!result.unsafe) {
        result.answer = result.initial_answer;
    } else {
        const std::vector<llama_token> released(result.steps.front().tokens.begin(),
                                                result.steps.front().tokens.begin() +
                                                    static_cast<std::ptrdiff_t>(judged.released_tokens));
        finish_unsafe(query, call.max_tokens, *p3, *p4_empty, released, judged.released_text, writer, result);
    }
    result.seconds = seconds_since(t0);
    return result;
}

}  // namespace ecso
