// The ECSO request plan (see session.hpp): the calls, their cancellation and progress, the step
// budgets, and the four steps in the paper's order. The decoding engine is session_engine.cpp.
#include "ecso/session.hpp"

#include <algorithm>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/prompts.hpp"
#include "ecso/session_internal.hpp"
#include "ecso/utf8.hpp"
#include "ecso/verdict.hpp"

namespace ecso {
namespace {

void check_image(const RgbImage & image, uint64_t max_pixels) {
    if (image.width == 0 || image.height == 0) {
        throw ImageError("the image is empty (" + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         " pixels)");
    }
    const uint64_t pixels = static_cast<uint64_t>(image.width) * image.height;
    if (pixels > max_pixels) {
        throw ImageError("the image has " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         " pixels, over the limit of " + std::to_string(max_pixels) +
                         "; downscale it or raise EcsoConfig.max_image_pixels");
    }
    if (image.pixels.size() != pixels * 3) {
        throw ImageError("the pixel buffer has " + std::to_string(image.pixels.size()) + " bytes but " +
                         std::to_string(image.width) + "x" + std::to_string(image.height) + " RGB needs " +
                         std::to_string(pixels * 3));
    }
}


}  // namespace

// Positions the judge's quote leaves for its verdict: the paper's verdict is a token or two, and
// 16 is the default max_tokens_judge. The judge's generation is capped by the room it then has.
static constexpr int32_t kJudgeReserve = 16;

static int32_t judge_reserve(int32_t judge_tokens) { return std::max(1, std::min(judge_tokens, kJudgeReserve)); }

static_assert(EcsoSession::kNumSequences <= static_cast<int>(kMinBatch),
              "a batch needs a row per sequence: raise kMinBatch with the sequences");

class EcsoSession::ActiveCall {
public:
    ActiveCall(EcsoSession & session, const CallOptions & call) : session_(session) {
        std::shared_ptr<CancelToken> token = call.cancel ? call.cancel : std::make_shared<CancelToken>();
        session_.active_cancel_.store(token.get());
        session_.active_progress_ = call.on_progress ? &call.on_progress : nullptr;
        std::lock_guard<std::mutex> lock(session_.active_mutex_);
        session_.active_token_ = std::move(token);
    }
    ~ActiveCall() {
        std::lock_guard<std::mutex> lock(session_.active_mutex_);
        session_.active_cancel_.store(nullptr);
        session_.active_progress_ = nullptr;
        session_.active_token_.reset();
    }
    ActiveCall(const ActiveCall &) = delete;
    ActiveCall & operator=(const ActiveCall &) = delete;

private:
    EcsoSession & session_;
};

EcsoSession::EcsoSession(std::shared_ptr<const Model> model, EcsoConfig config)
    : model_(std::move(model)), config_(std::move(config)) {
    if (!model_) {
        throw ConfigError("a session needs a loaded model");
    }
    config_.validate();
    frame_ = ChatFrame::build(*model_, config_);

    const ModelOptions & opts = model_->options();
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = opts.n_ctx;
    cparams.n_batch = std::min(opts.n_batch, opts.n_ctx);
    cparams.n_ubatch = cparams.n_batch;
    cparams.n_seq_max = kNumSequences;
    // One cell pool for all sequences: seq_cp then shares cells, and partial copies are allowed.
    cparams.kv_unified = true;
    // Sliding-window layers (Gemma 3) may overwrite a cell once it is outside the window of the
    // one sequence holding it, and a later step that shares that prefix would then attend without
    // it. A full-size window cache never overwrites a cell a step can still share; at the default
    // n_ctx it costs nothing, since n_swa * 4 sequences already reach n_ctx (docs/model-families.md).
    cparams.swa_full = llama_model_n_swa(model_->llama()) > 0;
    cparams.n_threads = model_->n_threads();
    cparams.n_threads_batch = model_->n_threads_batch();
    cparams.flash_attn_type = model_->flash_attn_type();
    cparams.abort_callback = &EcsoSession::abort_requested;
    cparams.abort_callback_data = this;
    cparams.no_perf = true;
    clear_log_errors();
    ctx_.reset(llama_init_from_model(model_->llama(), cparams));
    if (!ctx_) {
        throw RuntimeFailure("llama.cpp could not create a context of " + std::to_string(opts.n_ctx) + " tokens" +
                             last_log_suffix() + ". Lower n_ctx or free memory");
    }
    kv_ = std::make_unique<KvSequences>(ctx_.get(), kNumSequences);
    if (config_.verdict_rule == VerdictRule::Logits) {
        yes_no_ = YesNoTokens::find(*model_);
    }
    batch_ = std::make_unique<TokenBatch>(static_cast<int32_t>(llama_n_batch(ctx_.get())));
}

uint32_t EcsoSession::n_ctx() const { return llama_n_ctx(ctx_.get()); }

void EcsoSession::cancel() {
    std::lock_guard<std::mutex> lock(active_mutex_);
    if (active_token_) {
        active_token_->cancel();
    }
}

bool EcsoSession::abort_requested(void * session) {
    // Called from llama.cpp's compute threads: read the token only.
    const CancelToken * token = static_cast<EcsoSession *>(session)->active_cancel_.load();
    return token != nullptr && token->cancelled();
}

void EcsoSession::throw_if_cancelled(const char * step) const {
    const CancelToken * token = active_cancel_.load();
    if (token != nullptr && token->cancelled()) {
        throw CancelledError(std::string("cancelled during step '") + step + "'");
    }
}

void EcsoSession::report(const char * step, const char * phase, int32_t done, int32_t total) const {
    if (active_progress_ != nullptr) {
        (*active_progress_)(Progress{step, phase, done, total});
    }
}

EcsoResult EcsoSession::run(const RgbImage & image, const std::string & query, const CallOptions & call) {
    return execute(image, query, call, true);
}

EcsoResult EcsoSession::answer(const RgbImage & image, const std::string & query, const CallOptions & call) {
    return execute(image, query, call, false);
}

Prompt EcsoSession::judge_prompt(const std::string & query, const std::string & response, const RgbImage & image,
                                 bool placeholder, int32_t judge_tokens) const {
    auto build = [&](size_t chars) {
        const std::string text = prompts::fill(
            config_.judge_template, {{"query", query}, {"response", prompts::cut_chars(response, chars)}});
        return image_prompt(text, image, placeholder);
    };
    const int32_t room = static_cast<int32_t>(n_ctx()) - judge_reserve(judge_tokens);
    Prompt prompt = build(config_.response_cut_chars);
    if (prompt.n_cells() <= room) {
        return prompt;
    }
    // The context cannot hold the quote: the largest cut that fits (the empty quote fits: the
    // request was refused before step 1 otherwise). The same cut on every path keeps reuse exact.
    size_t lo = 0;
    size_t hi = std::min(config_.response_cut_chars, prompts::count_chars(response));
    while (lo < hi) {
        const size_t mid = lo + (hi - lo + 1) / 2;
        if (build(mid).n_cells() <= room) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return build(lo);
}

int32_t EcsoSession::judge_token_limit() const {
    return config_.verdict_rule == VerdictRule::Logits ? 0 : config_.max_tokens_judge;  // logits: no text
}

Prompt EcsoSession::judge_prompt_without_quote(const std::string & query, const RgbImage & image) const {
    return image_prompt(prompts::fill(config_.judge_template, {{"query", query}, {"response", ""}}), image, true);
}

void EcsoSession::check_prompt_fits(const char * step, const Prompt & prompt) const {
    const int32_t n_ubatch = static_cast<int32_t>(llama_n_ubatch(ctx_.get()));
    for (const auto & item : prompt.items()) {
        // Non-causal image attention (Gemma 3) needs every image token in one ubatch: split over
        // two, the first half never sees the second (llama.cpp's own helper aborts here).
        if (item.is_media() && item.media != nullptr && mtmd_decode_use_non_causal(model_->mtmd(), item.media)) {
            const auto n_tokens = static_cast<int32_t>(mtmd_input_chunk_get_n_tokens(item.media));
            if (n_tokens > n_ubatch) {
                throw ConfigError("the image is " + std::to_string(n_tokens) + " tokens, and this model (projector '" +
                                  model_->projector_info().projector_type +
                                  "') attends to all of them at once, so they must be evaluated in one batch; n_batch "
                                  "is " + std::to_string(n_ubatch) + ". Load the model with Model(..., n_batch=" +
                                  std::to_string(n_tokens) + ") or more");
            }
        }
    }
    const int32_t n = static_cast<int32_t>(n_ctx());
    if (prompt.n_cells() >= n) {
        throw ContextOverflowError(std::string("the '") + step + "' prompt needs " + std::to_string(prompt.n_cells()) +
                                   " tokens (" + std::to_string(prompt.image_tokens()) +
                                   " of them for the image) but the context holds " + std::to_string(n) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or shorten the query");
    }
}

void EcsoSession::check_steps_fit(const Prompt & answer, const Prompt & judge_empty, const Prompt * caption,
                                  const Prompt * text_only_empty) const {
    const int32_t n = static_cast<int32_t>(n_ctx());
    const int32_t judge_tokens = judge_token_limit();
    struct Need {
        const char * step;
        int32_t tokens;
        const char * what;
    };
    check_prompt_fits("answer", answer);
    std::vector<Need> needs = {
        {"judge", judge_empty.n_cells() + judge_reserve(judge_tokens), "its prompt without the quoted answer, and room for its verdict"},
    };
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

EcsoResult EcsoSession::judge(const RgbImage & image, const std::string & query, const std::string & response,
                              const CallOptions & call) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    ActiveCall active(*this, call);
    throw_if_cancelled("judge");
    const auto t0 = Clock::now();
    if (!is_valid_utf8(query) || !is_valid_utf8(response)) {
        throw ConfigError("the query and the response must be valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);
    kv_->clear();
    image_id_ = image_content_id(image);
    embd_cache_.clear();
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    const int32_t judge_tokens = judge_token_limit();
    const Prompt empty = judge_prompt_without_quote(query, image);
    const int32_t need = empty.n_cells() + judge_reserve(judge_tokens);
    if (need > static_cast<int32_t>(n_ctx())) {
        throw ContextOverflowError("the 'judge' prompt needs " + std::to_string(need) +
                                   " tokens without the response (room for its verdict included) but the context "
                                   "holds " + std::to_string(n_ctx()) + ". Raise n_ctx or shorten the query");
    }
    const Prompt prompt = judge_prompt(query, strip(response), image, false, judge_tokens);
    EcsoResult result;
    result.judged = true;
    result.image_tokens = prompt.image_tokens();
    result.template_prefix_tokens = prompt.positions_before_image();
    result.steps.push_back(run_step("judge", kSeqJudge, prompt,
                                    std::min(judge_tokens, static_cast<int32_t>(n_ctx()) - prompt.n_cells()), {}, nullptr));
    if (logits_rule) {
        result.p_yes = yes_probability(llama_get_logits_ith(ctx_.get(), -1), *yes_no_, config_.sampling.logit_bias);
        result.steps.back().text = *result.p_yes > 0.5 ? "yes" : "no";
    }
    result.verdict_text = result.steps.back().text;
    result.unsafe = judge_verdict(result.verdict_text, config_.verdict_rule);
    result.judged_unsafe = result.unsafe;
    result.seconds = seconds_since(t0);
    return result;
}

Prompt EcsoSession::image_prompt(const std::string & text, const RgbImage & image, bool placeholder) const {
    PromptImage pimg{&image, image_id_, placeholder};
    if (config_.image_placement == ImagePlacement::BeforeText) {
        return Prompt::build(*model_, frame_, "", &pimg, "\n" + text);
    }
    return Prompt::build(*model_, frame_, text + "\n", &pimg, "");
}

EcsoResult EcsoSession::execute(const RgbImage & image, const std::string & query, const CallOptions & call,
                                bool protect) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    ActiveCall active(*this, call);
    throw_if_cancelled("answer");
    const auto t0 = Clock::now();
    const int32_t max_tokens = call.max_tokens;
    if (max_tokens < 1) {
        throw ConfigError("max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")");
    }
    if (!is_valid_utf8(query)) {
        throw ConfigError("the query is not valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);

    kv_->clear();
    image_id_ = image_content_id(image);
    embd_cache_.clear();

    EcsoResult result;
    result.judged = protect;
    const int32_t n = static_cast<int32_t>(n_ctx());
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    const int32_t judge_tokens = judge_token_limit();

    // Step 1: answer with the image. Held back (recorded) when protecting, live otherwise.
    const Prompt p1 = image_prompt(query, image, false);
    result.image_tokens = p1.image_tokens();
    result.template_prefix_tokens = p1.positions_before_image();
    // Steps 2-4 are sized before step 1 runs: a request that could not finish is refused now,
    // not after the work (the caption's prompt does not depend on step 1, so it is built once).
    std::optional<Prompt> p3;
    std::optional<Prompt> p4_empty;
    if (protect) {
        const bool may_be_unsafe = config_.verdict_override.value_or(true);
        const Prompt judge_empty = judge_prompt_without_quote(query, image);
        if (may_be_unsafe) {
            p3.emplace(image_prompt(prompts::fill(config_.caption_template, {{"query", query}}), image,
                                    config_.reuse_kv));
            p4_empty.emplace(Prompt::build(
                *model_, frame_, prompts::fill(config_.text_only_template, {{"query", query}, {"caption", ""}}),
                nullptr, ""));
        }
        check_steps_fit(p1, judge_empty, p3 ? &*p3 : nullptr, p4_empty ? &*p4_empty : nullptr);
    }
    std::vector<std::string> answer_pieces;
    const TextSink no_sink;
    bool shadowing = protect && config_.shadow_judge && config_.reuse_kv &&
                     config_.image_placement == ImagePlacement::BeforeText;
    const int32_t want_answer = config_.max_tokens_answer.value_or(max_tokens);
    // The judge template around {response}: before it goes in ahead of the answer, after it behind.
    const size_t at = config_.judge_template.find("{response}");
    const std::string judge_before = prompts::fill(config_.judge_template.substr(0, at), {{"query", query}});
    const std::string judge_after =
        prompts::fill(config_.judge_template.substr(at + std::string("{response}").size()), {{"query", query}});
    ShadowJudge shadow;
    std::optional<Prompt> judge_head;
    std::vector<llama_token> judge_rest;
    if (shadowing) {
        PromptImage pimg{&image, image_id_, true};
        judge_head.emplace(Prompt::build(*model_, frame_, "", &pimg, "\n" + judge_before, false));
        shadow.head = &*judge_head;
        for (const auto & part : {model_->tokenize(judge_after, false, false), model_->tokenize(frame_.tail, false, true)}) {
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
    result.steps.push_back(run_step("answer", kSeqAnswer, p1, want_answer,
                                    protect ? no_sink : call.on_text, &answer_pieces,
                                    shadowing ? &shadow : nullptr, quote_limit));
    result.initial_answer = result.steps.back().text;
    result.answer = result.initial_answer;
    if (!protect) {
        result.seconds = seconds_since(t0);
        return result;
    }

    // Step 2: the model judges its own answer, image still in the prompt.
    if (shadowing) {
        result.steps.push_back(finish_shadow(shadow, judge_rest, judge_tokens));
    } else {
        const Prompt p2 = judge_prompt(query, result.initial_answer, image, config_.reuse_kv, judge_tokens);
        result.steps.push_back(run_step("judge", kSeqJudge, p2, std::min(judge_tokens, n - p2.n_cells()), no_sink, nullptr));
    }
    if (logits_rule) {
        // The prompt's last logits are still in the context: no token is generated.
        result.p_yes = yes_probability(llama_get_logits_ith(ctx_.get(), -1), *yes_no_, config_.sampling.logit_bias);
        result.steps.back().text = *result.p_yes > 0.5 ? "yes" : "no";
    }
    kv_->drop(kSeqJudge);
    result.verdict_text = result.steps.back().text;
    const bool judged_unsafe = judge_verdict(result.verdict_text, config_.verdict_rule);
    result.verdict_forced = config_.verdict_override.has_value();
    result.judged_unsafe = judged_unsafe;
    result.unsafe = config_.verdict_override.value_or(judged_unsafe);

    if (!result.unsafe) {
        SinkWriter writer(call.on_text);
        for (const auto & piece : answer_pieces) {
            writer.write(piece);
        }
        result.seconds = seconds_since(t0);
        return result;
    }

    // Step 3: query-aware image-to-text. The caption and the final answer share the room step 4
    // has; when both limits cannot fit, each gets about half of it.
    const int32_t want_caption = config_.max_tokens_caption.value_or(max_tokens);
    const int32_t want_final = config_.max_tokens_text_only.value_or(max_tokens);
    const int32_t room4 = n - p4_empty->n_cells();
    const int32_t final_share = std::min(want_final, std::max(1, room4 / 2));
    const int32_t caption_cap = std::min({want_caption, n - p3->n_cells(), room4 - final_share});
    result.steps.push_back(run_step("caption", kSeqCaption, *p3, caption_cap, no_sink, nullptr));
    kv_->drop(kSeqCaption);
    result.caption = result.steps.back().text;

    // Step 4: eyes closed, text only; streamed live. A caption whose text re-tokenizes longer
    // than it was generated is cut until one answer token fits.
    auto text_only_prompt = [&](size_t chars) {
        const std::string text = prompts::fill(
            config_.text_only_template, {{"query", query}, {"caption", prompts::cut_chars(*result.caption, chars)}});
        return Prompt::build(*model_, frame_, text, nullptr, "");
    };
    size_t caption_chars = prompts::count_chars(*result.caption);
    Prompt p4 = text_only_prompt(caption_chars);
    while (p4.n_cells() + 1 > n && caption_chars > 0) {
        caption_chars = caption_chars * 9 / 10;
        p4 = text_only_prompt(caption_chars);
    }
    result.steps.push_back(run_step("text_only", kSeqTextOnly, p4, std::min(want_final, n - p4.n_cells()), call.on_text,
                                    nullptr));
    result.answer = result.steps.back().text;
    result.seconds = seconds_since(t0);
    return result;
}

}  // namespace ecso
