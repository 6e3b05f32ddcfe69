// The ECSO request (see session.hpp): step plan, prefix reuse, prompt evaluation and generation.
#include "ecso/session.hpp"

#include <algorithm>
#include <chrono>

#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/prompts.hpp"
#include "ecso/sampling.hpp"
#include "ecso/utf8.hpp"
#include "ecso/verdict.hpp"
#include "mtmd-helper.h"

namespace ecso {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

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

// Replays recorded text pieces (or streams live ones) so that the sink sees the stripped text.
class SinkWriter {
public:
    explicit SinkWriter(const TextSink & sink) : sink_(sink) {}
    void write(const std::string & piece) {
        if (!sink_) {
            return;
        }
        const std::string out = stream_.push(piece);
        if (!out.empty()) {
            sink_(out);
        }
    }

private:
    const TextSink & sink_;
    StrippedStream stream_;
};

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
    if (prompt.n_pos() <= room) {
        return prompt;
    }
    // The context cannot hold the quote: the largest cut that fits (the empty quote fits: the
    // request was refused before step 1 otherwise). The same cut on every path keeps reuse exact.
    size_t lo = 0;
    size_t hi = std::min(config_.response_cut_chars, prompts::count_chars(response));
    while (lo < hi) {
        const size_t mid = lo + (hi - lo + 1) / 2;
        if (build(mid).n_pos() <= room) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return build(lo);
}

void EcsoSession::check_prompt_fits(const char * step, const Prompt & prompt) const {
    const int32_t n = static_cast<int32_t>(n_ctx());
    if (prompt.n_pos() >= n) {
        throw ContextOverflowError(std::string("the '") + step + "' prompt needs " + std::to_string(prompt.n_pos()) +
                                   " positions (" + std::to_string(prompt.image_tokens()) +
                                   " of them for the image) but the context holds " + std::to_string(n) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or shorten the query");
    }
}

void EcsoSession::check_steps_fit(const Prompt & answer, const Prompt & judge_empty, const Prompt * caption,
                                  const Prompt * text_only_empty) const {
    const int32_t n = static_cast<int32_t>(n_ctx());
    const int32_t judge_tokens = config_.verdict_rule == VerdictRule::Logits ? 0 : config_.max_tokens_judge;
    struct Need {
        const char * step;
        int32_t positions;
        const char * what;
    };
    check_prompt_fits("answer", answer);
    std::vector<Need> needs = {
        {"judge", judge_empty.n_pos() + judge_reserve(judge_tokens), "its prompt without the quoted answer, and room for its verdict"},
    };
    if (caption != nullptr) {
        needs.push_back({"caption", caption->n_pos() + 1, "its prompt and one token"});
        needs.push_back({"text_only", text_only_empty->n_pos() + 2, "its prompt, a one-token caption and one token"});
    }
    for (const Need & need : needs) {
        if (need.positions > n) {
            throw ContextOverflowError("the request cannot finish in a context of " + std::to_string(n) +
                                       " positions: step '" + need.step + "' alone needs " +
                                       std::to_string(need.positions) + " (" + need.what +
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
    const int32_t judge_tokens = logits_rule ? 0 : config_.max_tokens_judge;
    const Prompt empty = image_prompt(prompts::fill(config_.judge_template, {{"query", query}, {"response", ""}}),
                                      image, true);
    const int32_t need = empty.n_pos() + judge_reserve(judge_tokens);
    if (need > static_cast<int32_t>(n_ctx())) {
        throw ContextOverflowError("the 'judge' prompt needs " + std::to_string(need) +
                                   " positions without the response (room for its verdict included) but the context "
                                   "holds " + std::to_string(n_ctx()) + ". Raise n_ctx or shorten the query");
    }
    const Prompt prompt = judge_prompt(query, strip(response), image, false, judge_tokens);
    EcsoResult result;
    result.judged = true;
    result.image_tokens = prompt.image_tokens();
    result.template_prefix_tokens = prompt.positions_before_image();
    result.steps.push_back(run_step("judge", kSeqJudge, prompt,
                                    std::min(judge_tokens, static_cast<int32_t>(n_ctx()) - prompt.n_pos()), {}, nullptr));
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
    const int32_t judge_tokens = logits_rule ? 0 : config_.max_tokens_judge;

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
        const Prompt judge_empty = image_prompt(
            prompts::fill(config_.judge_template, {{"query", query}, {"response", ""}}), image, true);
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
        shadowing ? n - judge_reserve(judge_tokens) - static_cast<int32_t>(judge_rest.size()) - judge_head->n_pos() : 0;
    if (shadowing) {
        // The judge's copy lives beside step 1's cells in one cell pool: shadow only when both fit
        // at step 1's token limit; otherwise the judge runs after step 1, as in the paper.
        const int64_t cells = int64_t{p1.n_pos()} + want_answer + judge_head->n_pos() +
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
        result.steps.push_back(run_step("judge", kSeqJudge, p2, std::min(judge_tokens, n - p2.n_pos()), no_sink, nullptr));
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
    const int32_t room4 = n - p4_empty->n_pos();
    const int32_t final_share = std::min(want_final, std::max(1, room4 / 2));
    const int32_t caption_cap = std::min({want_caption, n - p3->n_pos(), room4 - final_share});
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
    while (p4.n_pos() + 1 > n && caption_chars > 0) {
        caption_chars = caption_chars * 9 / 10;
        p4 = text_only_prompt(caption_chars);
    }
    result.steps.push_back(run_step("text_only", kSeqTextOnly, p4, std::min(want_final, n - p4.n_pos()), call.on_text,
                                    nullptr));
    result.answer = result.steps.back().text;
    result.seconds = seconds_since(t0);
    return result;
}

StepRecord EcsoSession::run_step(const char * name, int seq, const Prompt & prompt, int32_t max_tokens,
                                 const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow,
                                 int32_t quote_limit) {
    throw_if_cancelled(name);
    const auto t0 = Clock::now();
    StepRecord rec;
    rec.name = name;
    rec.prompt_tokens = prompt.n_pos();
    rec.input_tokens = prompt.input_tokens();
    check_prompt_fits(name, prompt);

    KvSequences::Prefix prefix;
    if (config_.reuse_kv) {
        const size_t shared = kv_->longest_prefix(prompt.items(), seq, prompt.items().size()).items;
        prefix = kv_->longest_prefix(prompt.items(), seq, prompt.reuse_boundary(shared));
        kv_->start_from(seq, prefix, prompt.items());
    } else {
        kv_->clear();  // the reference path: every step from an empty cache
    }
    rec.tokens_reused = prefix.positions;

    report(name, "prefill", 0, rec.prompt_tokens - prefix.positions);
    const auto t_prefill = Clock::now();
    evaluate_prompt(prompt, prefix.items, prefix.positions, seq, rec);
    rec.prefill_seconds = seconds_since(t_prefill) - rec.encode_seconds;

    if (shadow != nullptr) {
        open_shadow(*shadow, quote_limit);
    }
    const auto t_decode = Clock::now();
    generate(seq, rec.prompt_tokens, max_tokens, rec, live, pieces, shadow);
    rec.decode_seconds = seconds_since(t_decode);
    rec.seconds = seconds_since(t0);
    return rec;
}

void EcsoSession::open_shadow(ShadowJudge & shadow, int32_t quote_limit) {
    shadow.quote_limit = quote_limit;
    shadow.quoting = quote_limit > 0;
    const auto & items = shadow.head->items();
    const size_t shared = kv_->longest_prefix(items, kSeqJudge, items.size()).items;
    const KvSequences::Prefix prefix = kv_->longest_prefix(items, kSeqJudge, shadow.head->reuse_boundary(shared));
    kv_->share(kSeqJudge, prefix, items);  // step 1 keeps its whole prompt: it is still decoding
    shadow.reused = prefix.positions;
    shadow.shared_items = prefix.items;
    shadow.pos = prefix.positions;
    const std::vector<llama_token> head_input = shadow.head->input_tokens();
    shadow.input.assign(head_input.begin(), head_input.begin() + static_cast<std::ptrdiff_t>(prefix.items));
    for (size_t i = prefix.items; i < items.size(); ++i) {
        if (items[i].is_media()) {
            throw RuntimeFailure("internal: shadow judging needs the image in the shared prefix");
        }
        shadow.queue.push_back(items[i].token);
    }
}

StepRecord EcsoSession::finish_shadow(ShadowJudge & shadow, const std::vector<llama_token> & judge_rest,
                                      int32_t max_tokens) {
    throw_if_cancelled("judge");
    const auto t0 = Clock::now();
    StepRecord rec;
    rec.name = "judge";
    std::vector<llama_token> rest(shadow.queue.begin() + static_cast<std::ptrdiff_t>(shadow.fed), shadow.queue.end());
    rest.insert(rest.end(), judge_rest.begin(), judge_rest.end());
    // Step 1's answer cells are never read again (steps 3-4 share only [head, image] or the head):
    // free them, so the judge's rest and its verdict have the pool step 1 used.
    kv_->truncate(kSeqAnswer, shadow.shared_items);
    rec.input_tokens = shadow.input;
    rec.input_tokens.insert(rec.input_tokens.end(), shadow.queue.begin(), shadow.queue.end());
    rec.input_tokens.insert(rec.input_tokens.end(), rest.begin() + static_cast<std::ptrdiff_t>(shadow.queue.size() - shadow.fed),
                            rest.end());
    rec.tokens_reused = shadow.reused;
    rec.tokens_shadowed = static_cast<int32_t>(shadow.fed);
    rec.tokens_prefilled = static_cast<int32_t>(rest.size());
    rec.prompt_tokens = shadow.pos + rec.tokens_prefilled;
    const int32_t n_ctx = static_cast<int32_t>(this->n_ctx());
    if (rec.prompt_tokens >= n_ctx) {
        throw ContextOverflowError("the 'judge' prompt needs " + std::to_string(rec.prompt_tokens) +
                                   " positions but the context holds " + std::to_string(n_ctx) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or lower the answer's token limit");
    }
    const auto t_prefill = Clock::now();
    decode_text(rest, shadow.pos, kSeqJudge, "prompt of step 'judge'");
    rec.prefill_seconds = seconds_since(t_prefill);
    const auto t_decode = Clock::now();
    generate(kSeqJudge, rec.prompt_tokens, std::min(max_tokens, n_ctx - rec.prompt_tokens), rec, {}, nullptr);
    rec.decode_seconds = seconds_since(t_decode);
    rec.seconds = seconds_since(t0);
    return rec;
}

void EcsoSession::decode_text(const std::vector<llama_token> & tokens, int32_t pos, int seq, const std::string & what) {
    size_t i = 0;
    while (i < tokens.size()) {
        batch_->clear();
        while (i < tokens.size() && !batch_->full()) {
            batch_->add(tokens[i], pos, seq, i + 1 == tokens.size());
            kv_->append(seq, {tokens[i], nullptr, std::string(), 1});
            ++pos;
            ++i;
        }
        throw_if_cancelled("judge");
        check_decode_status(llama_decode(ctx_.get(), batch_->get()), what.c_str());
    }
}

void EcsoSession::evaluate_prompt(const Prompt & prompt, size_t first_item, int32_t first_pos, int seq,
                                  StepRecord & rec) {
    const auto & items = prompt.items();
    int32_t pos = first_pos;
    size_t i = first_item;
    while (i < items.size()) {
        if (items[i].is_media()) {
            evaluate_media(items[i], pos, seq, rec);
            pos += items[i].n_pos;
            kv_->append(seq, items[i]);
            ++i;
            continue;
        }
        batch_->clear();
        size_t j = i;
        while (j < items.size() && !items[j].is_media() && !batch_->full() && !(j > i && j == prompt.head_items())) {
            // logits only for the prompt's last token: the first generated token samples from it
            batch_->add(items[j].token, pos, seq, j + 1 == items.size());
            ++pos;
            ++j;
        }
        throw_if_cancelled(rec.name.c_str());
        check_decode_status(llama_decode(ctx_.get(), batch_->get()), ("prompt of step '" + rec.name + "'").c_str());
        for (size_t k = i; k < j; ++k) {
            kv_->append(seq, items[k]);
        }
        i = j;
    }
    rec.tokens_prefilled = pos - first_pos;
}

void EcsoSession::evaluate_media(const PromptItem & item, int32_t pos, int seq, StepRecord & rec) {
    // One entry per media chunk: an image sliced into tiles (LLaVA-1.6, SmolVLM, ...) is several
    // chunks of one bitmap, and each has its own embeddings (Prompt names them apart).
    auto cached = config_.reuse_kv ? embd_cache_.find(item.media_id) : embd_cache_.end();
    if (cached == embd_cache_.end()) {
        if (mtmd_input_chunk_get_n_tokens(item.media) == 0) {
            throw RuntimeFailure("internal: an image placeholder reached the encoder");
        }
        throw_if_cancelled(rec.name.c_str());
        const auto t0 = Clock::now();
        report(rec.name.c_str(), "encode", 0, 0);
        std::lock_guard<std::mutex> lock(model_->vision_mutex());
        clear_log_errors();
        const Model::EncodeObserver observer{active_cancel_.load(), active_progress_, rec.name.c_str()};
        model_->set_encode_observer(&observer);
        const int32_t status = mtmd_encode_chunk(model_->mtmd(), item.media);
        model_->set_encode_observer(nullptr);
        throw_if_cancelled(rec.name.c_str());  // a stopped encode leaves garbage: never cache it
        if (status != 0) {
            throw ImageError("the vision projector failed to encode the image" + last_log_suffix());
        }
        // mtmd's output holds a row per image token (not per position: M-RoPE images differ).
        const size_t n_tokens = mtmd_input_chunk_get_n_tokens(item.media);
        const float * embd = mtmd_get_output_embd(model_->mtmd());
        if (!config_.reuse_kv) {
            embd_cache_.clear();  // the reference path keeps nothing between steps
        }
        cached = embd_cache_.insert_or_assign(item.media_id,
                                              std::vector<float>(embd, embd + n_tokens * static_cast<size_t>(model_->n_embd())))
                     .first;
        rec.image_encodes += 1;
        rec.encode_seconds += seconds_since(t0);
    }
    llama_pos new_pos = 0;
    const int32_t status =
        mtmd_helper_decode_image_chunk(model_->mtmd(), ctx_.get(), item.media, cached->second.data(), pos, seq,
                                       static_cast<int32_t>(llama_n_batch(ctx_.get())), &new_pos, nullptr, nullptr);
    if (status != 0) {
        throw_if_cancelled(rec.name.c_str());
        throw ContextOverflowError("the image of step '" + rec.name + "' could not be added to the KV cache" +
                                   last_log_suffix() + ". Raise n_ctx");
    }
}

void EcsoSession::generate(int seq, int32_t pos, int32_t max_tokens, StepRecord & rec, const TextSink & live,
                           std::vector<std::string> * pieces, ShadowJudge * shadow) {
    Sampler sampler(*model_, config_.sampling, model_->options().seed);
    Utf8Decoder decoder;
    SinkWriter writer(live);
    std::string text;
    const int32_t n_ctx = static_cast<int32_t>(this->n_ctx());
    rec.stop_reason = "length";
    while (rec.tokens_generated < max_tokens) {
        throw_if_cancelled(rec.name.c_str());
        const llama_token token = sampler.sample(ctx_.get());
        if (model_->is_end_of_generation(token)) {
            rec.stop_reason = "eos";
            break;
        }
        rec.tokens.push_back(token);
        rec.tokens_generated += 1;
        std::string piece = decoder.push(model_->token_piece(token));
        const bool last = rec.tokens_generated == max_tokens || pos >= n_ctx;
        if (last) {
            piece += decoder.finish();
        }
        text += piece;
        if (pieces) {
            pieces->push_back(piece);
        }
        writer.write(piece);
        if (shadow != nullptr && shadow->quoting) {
            shadow->queue.push_back(token);
            shadow->quoted += 1;
            shadow->response_chars += prompts::count_chars(piece);
            shadow->quoting = shadow->response_chars < config_.response_cut_chars && shadow->quoted < shadow->quote_limit;
        }
        report(rec.name.c_str(), "generate", rec.tokens_generated, max_tokens);
        if (rec.tokens_generated == max_tokens) {
            break;  // the last token's KV entry is never needed
        }
        if (pos >= n_ctx) {
            rec.stop_reason = "context";
            break;
        }
        batch_->clear();
        batch_->add(token, pos, seq, true);
        if (shadow != nullptr) {
            // A decode step costs about the same with a few more tokens in the batch: the judge
            // takes up to kShadowPerStep of its queued tokens along.
            constexpr size_t kShadowPerStep = 2;
            for (size_t k = 0; k < kShadowPerStep && shadow->fed < shadow->queue.size() && !batch_->full(); ++k) {
                batch_->add(shadow->queue[shadow->fed], shadow->pos, kSeqJudge, false);
                kv_->append(kSeqJudge, {shadow->queue[shadow->fed], nullptr, std::string(), 1});
                ++shadow->fed;
                ++shadow->pos;
            }
        }
        check_decode_status(llama_decode(ctx_.get(), batch_->get()), ("generation of step '" + rec.name + "'").c_str());
        kv_->append(seq, {token, nullptr, std::string(), 1});
        ++pos;
    }
    if (rec.stop_reason == "eos") {
        const std::string tail = decoder.finish();
        text += tail;
        if (pieces) {
            pieces->push_back(tail);
        }
        writer.write(tail);
    }
    rec.text = strip(text);
}

}  // namespace ecso
