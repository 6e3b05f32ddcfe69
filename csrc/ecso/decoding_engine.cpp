// The decoding engine (see decoding_engine.hpp): the context and its call plumbing, a step's
// prompt into the KV cache from the longest reusable prefix, media chunks through the embedding
// cache, generation with the sampler, and the shadow judge's sequence fed beside step 1.
#include "ecso/decoding_engine.hpp"

#include <algorithm>
#include <set>

#include "ecso/context_factory.hpp"
#include "ecso/errors.hpp"
#include "ecso/image_embeddings.hpp"
#include "ecso/logging.hpp"
#include "ecso/model_impl.hpp"
#include "ecso/prompts.hpp"
#include "ecso/sampling.hpp"
#include "ecso/session_internal.hpp"
#include "ecso/utf8.hpp"
#include "mtmd-helper.h"

namespace ecso {

static_assert(DecodingEngine::kNumSequences <= static_cast<int>(kMinBatch),
              "a batch needs a row per sequence: raise kMinBatch with the sequences");

DecodingEngine::ActiveCall::ActiveCall(DecodingEngine & engine, const CallOptions & call) : engine_(engine) {
    std::shared_ptr<CancelToken> token = call.cancel ? call.cancel : std::make_shared<CancelToken>();
    engine_.active_cancel_.store(token.get());
    engine_.active_progress_ = call.on_progress ? &call.on_progress : nullptr;
    if (call.sampling || call.force_verdict) {
        engine_.call_config_ = engine_.config_;
        if (call.sampling) {
            engine_.call_config_->sampling = *call.sampling;
        }
        if (call.force_verdict) {
            engine_.call_config_->verdict_override = call.force_verdict;
        }
    }
    std::lock_guard<std::mutex> lock(engine_.active_mutex_);
    engine_.active_token_ = std::move(token);
}

DecodingEngine::ActiveCall::~ActiveCall() {
    std::lock_guard<std::mutex> lock(engine_.active_mutex_);
    engine_.active_cancel_.store(nullptr);
    engine_.active_progress_ = nullptr;
    engine_.call_config_.reset();
    engine_.active_token_.reset();
}

DecodingEngine::DecodingEngine(std::shared_ptr<const Model> model, const EcsoConfig & config)
    : model_(std::move(model)), config_(config) {
    const ModelOptions & opts = model_->options();
    own_ctx_ = make_context(model_->impl().text(), ContextOwner::Session, 1, opts.n_ctx,
                            std::min(opts.n_batch, opts.n_ctx), kNumSequences, &DecodingEngine::abort_requested, this);
    ctx_ = own_ctx_.get();
    kv_ = std::make_unique<KvSequences>(ctx_, kNumSequences);
    batch_ = std::make_unique<TokenBatch>(static_cast<int32_t>(llama_n_batch(ctx_)));
    if (config_.verdict_rule == VerdictRule::Logits || config_.judge_mode == JudgeMode::Incremental) {
        yes_no_ = YesNoTokens::find(*model_);
    }
}

DecodingEngine::DecodingEngine(std::shared_ptr<const Model> model, const EcsoConfig & config,
                               BatchScheduler & scheduler, int lane)
    : model_(std::move(model)), config_(config), scheduler_(&scheduler), lane_(lane), ctx_(scheduler.ctx()) {
    const int seq_base = lane * kNumSequences;
    kv_ = std::make_unique<KvSequences>(ctx_, kNumSequences, seq_base, &scheduler.context_mutex());
    batch_ = std::make_unique<TokenBatch>(scheduler.lane_batch(), seq_base);
    if (config_.verdict_rule == VerdictRule::Logits || config_.judge_mode == JudgeMode::Incremental) {
        yes_no_ = YesNoTokens::find(*model_);
    }
}

void DecodingEngine::decode_batch(const std::string & what) {
    int32_t status = 0;
    if (scheduler_ != nullptr) {
        status = scheduler_->decode(lane_, *batch_, lane_logits_);
    } else {
        status = llama_decode(ctx_, batch_->get());
        decode_calls_ += 1;
        batched_tokens_ += static_cast<uint64_t>(batch_->size());
    }
    check_decode_status(status, what.c_str());
}

const float * DecodingEngine::last_logits() const {
    if (scheduler_ == nullptr) {
        return llama_get_logits_ith(ctx_, -1);
    }
    const auto n_vocab = static_cast<size_t>(llama_vocab_n_tokens(model_->impl().vocab()));
    if (lane_logits_.size() < n_vocab) {
        throw RuntimeFailure("internal: no logits to sample from");
    }
    return lane_logits_.data() + (lane_logits_.size() - n_vocab);
}

llama_token DecodingEngine::sample_next(Sampler & sampler) {
    if (scheduler_ == nullptr) {
        return sampler.sample(ctx_);
    }
    return sampler.sample(last_logits(), llama_vocab_n_tokens(model_->impl().vocab()));
}

int32_t DecodingEngine::exclusive(const std::function<int32_t()> & work) {
    return scheduler_ ? scheduler_->run_solo(lane_, work, active_cancel_.load()) : work();
}

std::vector<uint8_t> DecodingEngine::save_sequence(int seq) {
    std::unique_lock<std::mutex> lock;
    if (scheduler_ != nullptr) {
        lock = std::unique_lock<std::mutex>(scheduler_->context_mutex());
    }
    const llama_seq_id id = kv_->seq_base() + seq;
    std::vector<uint8_t> state(llama_state_seq_get_size(ctx_, id));
    if (state.empty() || llama_state_seq_get_data(ctx_, state.data(), state.size(), id) != state.size()) {
        return {};
    }
    return state;
}

size_t DecodingEngine::restore_sequence(int seq, const std::vector<uint8_t> & state) {
    // A lane's restore runs alone, between rounds: where its cells land depends on the cells
    // free at that point, which the rounds make the same on every run.
    const llama_seq_id id = kv_->seq_base() + seq;
    size_t read = 0;
    exclusive([&] {
        read = llama_state_seq_set_data(ctx_, state.data(), state.size(), id);
        return int32_t{0};
    });
    return read;
}

std::vector<uint8_t> DecodingEngine::probe_sequence_state(int seq) {
    kv_->clear();
    forget_single_turn();
    int32_t status = 0;
    exclusive([&] {
        batch_->clear();
        batch_->add(0, 0, seq, false);
        status = llama_decode(ctx_, batch_->get());
        return int32_t{0};
    });
    check_decode_status(status, "the KV state probe");
    std::vector<uint8_t> state = save_sequence(seq);
    kv_->clear();
    return state;
}

int32_t DecodingEngine::seq_pos_max(int seq) {
    std::unique_lock<std::mutex> lock;
    if (scheduler_ != nullptr) {
        lock = std::unique_lock<std::mutex>(scheduler_->context_mutex());
    }
    return llama_memory_seq_pos_max(llama_get_memory(ctx_), kv_->seq_base() + seq);
}

void DecodingEngine::cancel() {
    std::lock_guard<std::mutex> lock(active_mutex_);
    if (active_token_) {
        active_token_->cancel();
    }
}

bool DecodingEngine::abort_requested(void * engine) {
    // Called from llama.cpp's compute threads: read the token only.
    const CancelToken * token = static_cast<DecodingEngine *>(engine)->active_cancel_.load();
    return token != nullptr && token->cancelled();
}

void DecodingEngine::throw_if_cancelled(const char * step) const {
    const CancelToken * token = active_cancel_.load();
    if (token != nullptr && token->cancelled()) {
        throw CancelledError(std::string("cancelled during step '") + step + "'");
    }
}

void DecodingEngine::report(const char * step, const char * phase, int32_t done, int32_t total) const {
    if (active_progress_ != nullptr) {
        (*active_progress_)(Progress{step, phase, done, total});
    }
}

double DecodingEngine::p_yes() const {
    return yes_probability(last_logits(), *yes_no_, sampling().logit_bias);
}

void DecodingEngine::start_single_turn(const Prompt & first) {
    size_t head_end = 1;  // the template head ends at the prompt's first boundary
    while (head_end < first.items().size() && !first.is_boundary(head_end)) {
        ++head_end;
    }
    const bool keep = head_kept_ && config_.reuse_kv && head_end < first.items().size();
    head_kept_ = false;  // until this request ends normally
    if (!keep) {
        kv_->clear();
        return;
    }
    KvSequences::Prefix prefix = kv_->longest_prefix(first.items(), -1, head_end);
    if (prefix.items != head_end) {
        prefix = {};  // all of the head or nothing: a partial head was never a batch of its own
    }
    kv_->keep_only(prefix, kSeqTextOnly, first.items());
}

void DecodingEngine::check_prompt_fits(const char * step, const Prompt & prompt) const {
    const int32_t n_ubatch = static_cast<int32_t>(llama_n_ubatch(ctx_));
    for (const auto & item : prompt.items()) {
        // Non-causal image attention (Gemma 3) needs every image token in one ubatch: split over
        // two, the first half never sees the second (llama.cpp's own helper aborts here).
        if (item.is_media() && item.media != nullptr && mtmd_decode_use_non_causal(model_->impl().mtmd(), item.media)) {
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
        std::set<std::string> ids;  // one per image, however many chunks it was sliced into
        for (const PromptItem & item : prompt.items()) {
            if (item.is_media()) {
                ids.insert(item.media_id.substr(0, item.media_id.find('#')));
            }
        }
        const size_t images = ids.size();
        throw ContextOverflowError(std::string("the '") + step + "' prompt needs " + std::to_string(prompt.n_cells()) +
                                   " tokens (" + std::to_string(prompt.image_tokens()) +
                                   " of them for " + (images > 1 ? "the images" : "the image") +
                                   ") but the context holds " + std::to_string(n) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or shorten the query");
    }
}

StepRecord DecodingEngine::run_step(const char * name, int seq, const Prompt & prompt, int32_t max_tokens,
                                 const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow,
                                 int32_t quote_limit, const TokenHook * after_token) {
    throw_if_cancelled(name);
    const auto t0 = Clock::now();
    StepRecord rec;
    rec.name = name;
    rec.prompt_tokens = prompt.n_cells();
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
    rec.tokens_reused = prefix.cells;

    report(name, "prefill", 0, rec.prompt_tokens - prefix.cells);
    const auto t_prefill = Clock::now();
    evaluate_prompt(prompt, prefix.items, prefix.positions, seq, rec);
    rec.prefill_seconds = seconds_since(t_prefill) - rec.encode_seconds;

    if (shadow != nullptr) {
        open_shadow(*shadow, quote_limit);
    }
    const auto t_decode = Clock::now();
    generate(seq, prompt.n_pos(), prompt.n_cells() - prompt.n_pos(), max_tokens, rec, live, pieces, shadow,
             after_token);
    rec.decode_seconds = seconds_since(t_decode);
    rec.seconds = seconds_since(t0);
    return rec;
}

void DecodingEngine::open_shadow(ShadowJudge & shadow, int32_t quote_limit) {
    shadow.quote_limit = quote_limit;
    shadow.quoting = quote_limit > 0;
    const auto & items = shadow.head->items();
    const size_t shared = kv_->longest_prefix(items, kSeqJudge, items.size()).items;
    const KvSequences::Prefix prefix = kv_->longest_prefix(items, kSeqJudge, shadow.head->reuse_boundary(shared));
    kv_->share(kSeqJudge, prefix, items);  // step 1 keeps its whole prompt: it is still decoding
    shadow.reused = prefix.cells;
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

StepRecord DecodingEngine::finish_shadow(ShadowJudge & shadow, const std::vector<llama_token> & judge_rest,
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
    // an M-RoPE image in the shared head fills more cells than positions
    const int32_t extra_cells = shadow.head->n_cells() - shadow.head->n_pos();
    rec.prompt_tokens = shadow.pos + extra_cells + rec.tokens_prefilled;
    const int32_t n_ctx = static_cast<int32_t>(this->n_ctx());
    if (rec.prompt_tokens >= n_ctx) {
        throw ContextOverflowError("the 'judge' prompt needs " + std::to_string(rec.prompt_tokens) +
                                   " tokens but the context holds " + std::to_string(n_ctx) +
                                   ". Raise n_ctx (Model(..., n_ctx=...)) or lower the answer's token limit");
    }
    const auto t_prefill = Clock::now();
    decode_text(rest, shadow.pos, kSeqJudge, "prompt of step 'judge'");
    rec.prefill_seconds = seconds_since(t_prefill);
    const auto t_decode = Clock::now();
    generate(kSeqJudge, shadow.pos + rec.tokens_prefilled, extra_cells, std::min(max_tokens, n_ctx - rec.prompt_tokens),
             rec, {}, nullptr);
    rec.decode_seconds = seconds_since(t_decode);
    rec.seconds = seconds_since(t0);
    return rec;
}

void DecodingEngine::complete_answer(int seq, const StepRecord & rec) {
    if (rec.stop_reason != "length" || rec.tokens.empty()) {
        return;
    }
    int32_t pos = 0;
    int32_t cells = 0;
    for (const PromptItem & item : kv_->held(seq)) {
        pos += item.n_pos;
        cells += item.n_cells;
    }
    if (cells + 1 > static_cast<int32_t>(n_ctx())) {
        return;
    }
    throw_if_cancelled(rec.name.c_str());
    batch_->clear();
    batch_->add(rec.tokens.back(), pos, seq, false);
    decode_batch("generation of step '" + rec.name + "'");
    kv_->append(seq, {rec.tokens.back(), nullptr, std::string(), 1, 1});
}

void DecodingEngine::decode_text(const std::vector<llama_token> & tokens, int32_t pos, int seq, const std::string & what) {
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
        decode_batch(what);
    }
}

void DecodingEngine::evaluate_prompt(const Prompt & prompt, size_t first_item, int32_t first_pos, int seq,
                                  StepRecord & rec) {
    const auto & items = prompt.items();
    int32_t pos = first_pos;
    int32_t cells = 0;
    size_t i = first_item;
    while (i < items.size()) {
        if (items[i].is_media()) {
            evaluate_media(items[i], pos, seq, rec);
            pos += items[i].n_pos;
            cells += items[i].n_cells;
            kv_->append(seq, items[i]);
            ++i;
            continue;
        }
        batch_->clear();
        size_t j = i;
        while (j < items.size() && !items[j].is_media() && !batch_->full() && !(j > i && prompt.is_boundary(j))) {
            // logits only for the prompt's last token: the first generated token samples from it
            batch_->add(items[j].token, pos, seq, j + 1 == items.size());
            ++pos;
            ++cells;
            ++j;
        }
        throw_if_cancelled(rec.name.c_str());
        decode_batch("prompt of step '" + rec.name + "'");
        for (size_t k = i; k < j; ++k) {
            kv_->append(seq, items[k]);
        }
        i = j;
    }
    rec.tokens_prefilled = cells;
}

void DecodingEngine::evaluate_media(const PromptItem & item, int32_t pos, int seq, StepRecord & rec) {
    // One entry per media chunk: an image sliced into tiles (LLaVA-1.6, SmolVLM, ...) is several
    // chunks of one bitmap, and each has its own embeddings (Prompt names them apart).
    auto cached = config_.reuse_kv ? embd_cache_.find(item.media_id) : embd_cache_.end();
    EncoderCache & shared = model_->impl().encoder_cache();
    if (config_.reuse_kv && share_encodings_) {
        if (cached != embd_cache_.end()) {
            shared.touch(item.media_id);
        } else if (const auto output = shared.find(item.media_id)) {
            cached = embd_cache_.insert_or_assign(item.media_id, *output).first;
        }
    }
    if (cached == embd_cache_.end()) {
        if (mtmd_input_chunk_get_n_tokens(item.media) == 0) {
            throw RuntimeFailure("internal: an image placeholder reached the encoder");
        }
        throw_if_cancelled(rec.name.c_str());
        const auto t0 = Clock::now();
        report(rec.name.c_str(), "encode", 0, 0);
        const size_t n_tokens = mtmd_input_chunk_get_n_tokens(item.media);
        std::vector<float> out;
        const int32_t status = exclusive([&] {
            std::lock_guard<std::mutex> lock(model_->impl().vision_mutex());
            clear_log_errors();
            const Model::Impl::EncodeObserver observer{active_cancel_.load(), active_progress_, rec.name.c_str()};
            model_->impl().set_encode_observer(&observer);
            const int32_t encoded = mtmd_encode_chunk(model_->impl().mtmd(), item.media);
            model_->impl().set_encode_observer(nullptr);
            if (encoded == 0) {
                // mtmd's output holds a row per image token (not per position: M-RoPE images differ).
                const float * embd = mtmd_get_output_embd(model_->impl().mtmd());
                out.assign(embd, embd + n_tokens * static_cast<size_t>(model_->n_embd()));
            }
            return encoded;
        });
        throw_if_cancelled(rec.name.c_str());  // a stopped encode leaves garbage: never cache it
        if (status != 0) {
            throw ImageError("the vision projector failed to encode the image" + last_log_suffix());
        }
        const ProjectorInfo & projector = model_->projector_info();
        check_image_embeddings(out, n_tokens, static_cast<size_t>(model_->n_embd()), projector.image_break_row,
                               "'" + projector.path + "' (type '" + projector.projector_type + "')");
        if (!config_.reuse_kv) {
            embd_cache_.clear();  // the reference path keeps nothing between steps
        } else if (share_encodings_) {
            shared.put(item.media_id, out);
        }
        cached = embd_cache_.insert_or_assign(item.media_id, std::move(out)).first;
        rec.image_encodes += 1;
        rec.encode_seconds += seconds_since(t0);
    }
    const auto n_batch = static_cast<int32_t>(llama_n_batch(ctx_));
    const int32_t status = exclusive([&] {
        llama_pos new_pos = 0;
        return mtmd_helper_decode_image_chunk(model_->impl().mtmd(), ctx_, item.media, cached->second.data(), pos,
                                              kv_->seq_base() + seq, n_batch, &new_pos, nullptr, nullptr);
    });
    const auto n_image = static_cast<uint64_t>(mtmd_input_chunk_get_n_tokens(item.media));
    const uint64_t calls = (n_image + static_cast<uint64_t>(n_batch) - 1) / static_cast<uint64_t>(n_batch);
    if (scheduler_ != nullptr) {
        scheduler_->count_decodes(calls, n_image);
    } else {
        decode_calls_ += calls;
        batched_tokens_ += n_image;
    }
    if (status != 0) {
        throw_if_cancelled(rec.name.c_str());
        throw ContextOverflowError("the image of step '" + rec.name + "' could not be added to the KV cache" +
                                   last_log_suffix() + ". Raise n_ctx");
    }
}

void DecodingEngine::generate(int seq, int32_t pos, int32_t extra_cells, int32_t max_tokens, StepRecord & rec,
                           const TextSink & live, std::vector<std::string> * pieces, ShadowJudge * shadow,
                           const TokenHook * after_token) {
    Sampler sampler(*model_, sampling(), model_->options().seed);
    Utf8Decoder decoder;
    SinkWriter writer(live);
    std::string text;
    // the cells in use: positions, plus what an M-RoPE image holds beyond its positions
    const int32_t n_ctx = static_cast<int32_t>(this->n_ctx()) - extra_cells;
    rec.stop_reason = "length";
    std::optional<llama_token> sampled;  // sampled before the hook's steps overwrote the logits
    while (rec.tokens_generated < max_tokens) {
        throw_if_cancelled(rec.name.c_str());
        const llama_token token = sampled ? *sampled : sample_next(sampler);
        sampled.reset();
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
        decode_batch("generation of step '" + rec.name + "'");
        kv_->append(seq, {token, nullptr, std::string(), 1});
        ++pos;
        if (after_token != nullptr && *after_token) {
            sampled = sample_next(sampler);
            if (!(*after_token)(rec, !decoder.holds_bytes())) {
                rec.stop_reason = "judge";
                break;
            }
        }
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
