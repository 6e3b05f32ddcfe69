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

void EcsoSession::cancel() { cancel_.store(true); }

bool EcsoSession::abort_requested(void * session) {
    // Called from llama.cpp's compute threads: read the flag only.
    return static_cast<EcsoSession *>(session)->cancel_.load(std::memory_order_relaxed);
}

void EcsoSession::throw_if_cancelled(const char * step) const {
    if (cancel_.load()) {
        throw CancelledError(std::string("cancelled during step '") + step + "'");
    }
}

EcsoResult EcsoSession::run(const RgbImage & image, const std::string & query, int32_t max_tokens,
                            const TextSink & on_text) {
    return execute(image, query, max_tokens, on_text, true);
}

EcsoResult EcsoSession::answer(const RgbImage & image, const std::string & query, int32_t max_tokens,
                               const TextSink & on_text) {
    return execute(image, query, max_tokens, on_text, false);
}

EcsoResult EcsoSession::judge(const RgbImage & image, const std::string & query, const std::string & response) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    cancel_.store(false);
    const auto t0 = Clock::now();
    if (!is_valid_utf8(query) || !is_valid_utf8(response)) {
        throw ConfigError("the query and the response must be valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);
    kv_->clear();
    cached_image_id_ = image_content_id(image);
    cached_embd_.clear();
    const std::string judge_text = prompts::fill(
        config_.judge_template, {{"query", query}, {"response", prompts::cut_chars(strip(response), config_.response_cut_chars)}});
    const Prompt prompt = image_prompt(judge_text, image, false);
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    EcsoResult result;
    result.judged = true;
    result.image_tokens = prompt.image_tokens();
    result.template_prefix_tokens = prompt.positions_before_image();
    result.steps.push_back(run_step("judge", kSeqJudge, prompt, logits_rule ? 0 : config_.max_tokens_judge, {}, nullptr));
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
    PromptImage pimg{&image, cached_image_id_, placeholder};
    if (config_.image_placement == ImagePlacement::BeforeText) {
        return Prompt::build(*model_, frame_, "", &pimg, "\n" + text);
    }
    return Prompt::build(*model_, frame_, text + "\n", &pimg, "");
}

EcsoResult EcsoSession::execute(const RgbImage & image, const std::string & query, int32_t max_tokens,
                                const TextSink & on_text, bool protect) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    cancel_.store(false);
    const auto t0 = Clock::now();
    if (max_tokens < 1) {
        throw ConfigError("max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")");
    }
    if (!is_valid_utf8(query)) {
        throw ConfigError("the query is not valid UTF-8");
    }
    check_image(image, config_.max_image_pixels);

    kv_->clear();
    cached_image_id_ = image_content_id(image);
    cached_embd_.clear();

    EcsoResult result;
    result.judged = protect;

    // Step 1: answer with the image. Held back (recorded) when protecting, live otherwise.
    const Prompt p1 = image_prompt(query, image, false);
    result.image_tokens = p1.image_tokens();
    result.template_prefix_tokens = p1.positions_before_image();
    std::vector<std::string> answer_pieces;
    const TextSink no_sink;
    const bool shadowing = protect && config_.shadow_judge && config_.reuse_kv &&
                           config_.image_placement == ImagePlacement::BeforeText;
    // The judge template around {response}: before it goes in ahead of the answer, after it behind.
    const size_t at = config_.judge_template.find("{response}");
    const std::string judge_before = prompts::fill(config_.judge_template.substr(0, at), {{"query", query}});
    const std::string judge_after =
        prompts::fill(config_.judge_template.substr(at + std::string("{response}").size()), {{"query", query}});
    ShadowJudge shadow;
    std::optional<Prompt> judge_head;
    if (shadowing) {
        PromptImage pimg{&image, cached_image_id_, true};
        judge_head.emplace(Prompt::build(*model_, frame_, "", &pimg, "\n" + judge_before, false));
        shadow.head = &*judge_head;
    }
    result.steps.push_back(run_step("answer", kSeqAnswer, p1, config_.max_tokens_answer.value_or(max_tokens),
                                    protect ? no_sink : on_text, &answer_pieces,
                                    shadowing ? &shadow : nullptr));
    result.initial_answer = result.steps.back().text;
    result.answer = result.initial_answer;
    if (!protect) {
        result.seconds = seconds_since(t0);
        return result;
    }

    // Step 2: the model judges its own answer, image still in the prompt.
    const std::string judge_text =
        prompts::fill(config_.judge_template, {{"query", query},
                                               {"response", prompts::cut_chars(result.initial_answer,
                                                                               config_.response_cut_chars)}});
    const bool logits_rule = config_.verdict_rule == VerdictRule::Logits;
    const int32_t judge_tokens = logits_rule ? 0 : config_.max_tokens_judge;
    if (shadowing) {
        result.steps.push_back(finish_shadow(shadow, judge_after, judge_tokens));
    } else {
        const Prompt p2 = image_prompt(judge_text, image, config_.reuse_kv);
        result.steps.push_back(run_step("judge", kSeqJudge, p2, judge_tokens, no_sink, nullptr));
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
        SinkWriter writer(on_text);
        for (const auto & piece : answer_pieces) {
            writer.write(piece);
        }
        result.seconds = seconds_since(t0);
        return result;
    }

    // Step 3: query-aware image-to-text.
    const Prompt p3 = image_prompt(prompts::fill(config_.caption_template, {{"query", query}}), image, config_.reuse_kv);
    result.steps.push_back(run_step("caption", kSeqCaption, p3, config_.max_tokens_caption.value_or(max_tokens),
                                    no_sink, nullptr));
    kv_->drop(kSeqCaption);
    result.caption = result.steps.back().text;

    // Step 4: eyes closed, text only; streamed live.
    const std::string text_only =
        prompts::fill(config_.text_only_template, {{"query", query}, {"caption", *result.caption}});
    const Prompt p4 = Prompt::build(*model_, frame_, text_only, nullptr, "");
    result.steps.push_back(run_step("text_only", kSeqTextOnly, p4,
                                    config_.max_tokens_text_only.value_or(max_tokens), on_text, nullptr));
    result.answer = result.steps.back().text;
    result.seconds = seconds_since(t0);
    return result;
}

StepRecord EcsoSession::run_step(const char * name, int seq, const Prompt & prompt, int32_t max_tokens,
                                 const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow) {
    throw_if_cancelled(name);
    const auto t0 = Clock::now();
    StepRecord rec;
    rec.name = name;
    rec.prompt_tokens = prompt.n_pos();
    rec.input_tokens = prompt.input_tokens();
    const int32_t n_ctx = static_cast<int32_t>(this->n_ctx());
    if (rec.prompt_tokens >= n_ctx) {
        throw ContextOverflowError("the '" + rec.name + "' prompt needs " + std::to_string(rec.prompt_tokens) +
                                   " positions (" + std::to_string(prompt.image_tokens()) +
                                   " of them for the image) but the context holds " + std::to_string(n_ctx) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or shorten the query");
    }

    KvSequences::Prefix prefix;
    if (config_.reuse_kv) {
        const size_t shared = kv_->longest_prefix(prompt.items(), seq, prompt.items().size()).items;
        prefix = kv_->longest_prefix(prompt.items(), seq, prompt.reuse_boundary(shared));
        kv_->start_from(seq, prefix, prompt.items());
    } else {
        kv_->clear();  // the reference path: every step from an empty cache
    }
    rec.tokens_reused = prefix.positions;

    const auto t_prefill = Clock::now();
    evaluate_prompt(prompt, prefix.items, prefix.positions, seq, rec);
    rec.prefill_seconds = seconds_since(t_prefill) - rec.encode_seconds;

    if (shadow != nullptr) {
        open_shadow(*shadow);
    }
    const auto t_decode = Clock::now();
    generate(seq, rec.prompt_tokens, max_tokens, rec, live, pieces, shadow);
    rec.decode_seconds = seconds_since(t_decode);
    rec.seconds = seconds_since(t0);
    return rec;
}

void EcsoSession::open_shadow(ShadowJudge & shadow) {
    const auto & items = shadow.head->items();
    const size_t shared = kv_->longest_prefix(items, kSeqJudge, items.size()).items;
    const KvSequences::Prefix prefix = kv_->longest_prefix(items, kSeqJudge, shadow.head->reuse_boundary(shared));
    kv_->share(kSeqJudge, prefix, items);  // step 1 keeps its whole prompt: it is still decoding
    shadow.reused = prefix.positions;
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

StepRecord EcsoSession::finish_shadow(ShadowJudge & shadow, const std::string & judge_rest, int32_t max_tokens) {
    throw_if_cancelled("judge");
    const auto t0 = Clock::now();
    StepRecord rec;
    rec.name = "judge";
    std::vector<llama_token> rest(shadow.queue.begin() + static_cast<std::ptrdiff_t>(shadow.fed), shadow.queue.end());
    for (const auto & part : {model_->tokenize(judge_rest, false, false), model_->tokenize(frame_.tail, false, true)}) {
        rest.insert(rest.end(), part.begin(), part.end());
    }
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
    generate(kSeqJudge, rec.prompt_tokens, max_tokens, rec, {}, nullptr);
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
    const size_t n_floats = static_cast<size_t>(item.n_pos) * static_cast<size_t>(model_->n_embd());
    const bool cached = config_.reuse_kv && item.media_id == cached_image_id_ && cached_embd_.size() >= n_floats;
    if (!cached) {
        if (mtmd_input_chunk_get_n_tokens(item.media) == 0) {
            throw RuntimeFailure("internal: an image placeholder reached the encoder");
        }
        throw_if_cancelled(rec.name.c_str());
        const auto t0 = Clock::now();
        std::lock_guard<std::mutex> lock(model_->vision_mutex());
        clear_log_errors();
        model_->set_encode_abort_flag(&cancel_);
        const int32_t status = mtmd_encode_chunk(model_->mtmd(), item.media);
        model_->set_encode_abort_flag(nullptr);
        throw_if_cancelled(rec.name.c_str());  // a stopped encode leaves garbage: never cache it
        if (status != 0) {
            throw ImageError("the vision projector failed to encode the image" + last_log_suffix());
        }
        const size_t n_tokens = mtmd_input_chunk_get_n_tokens(item.media);
        const float * embd = mtmd_get_output_embd(model_->mtmd());
        cached_embd_.assign(embd, embd + n_tokens * static_cast<size_t>(model_->n_embd()));
        cached_image_id_ = item.media_id;
        rec.image_encodes += 1;
        rec.encode_seconds += seconds_since(t0);
    }
    llama_pos new_pos = 0;
    const int32_t status =
        mtmd_helper_decode_image_chunk(model_->mtmd(), ctx_.get(), item.media, cached_embd_.data(), pos, seq,
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
            shadow->response_chars += prompts::count_chars(piece);
            shadow->quoting = shadow->response_chars < config_.response_cut_chars;
        }
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
            for (size_t k = 0; k < kShadowPerStep && shadow->fed < shadow->queue.size(); ++k) {
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
