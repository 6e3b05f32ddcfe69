// A guard model judging an answer (see guard_judge.hpp).
#include "ecso/guard_judge.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <vector>

#include "ecso/chat_frame.hpp"
#include "ecso/context_factory.hpp"
#include "ecso/errors.hpp"
#include "ecso/logging.hpp"
#include "ecso/text_model_impl.hpp"
#include "ecso/utf8.hpp"

namespace ecso {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool abort_if_cancelled(void * data) {
    const auto * cancel = static_cast<std::atomic<const CancelToken *> *>(data)->load();
    return cancel != nullptr && cancel->cancelled();
}

}  // namespace

struct GuardJudge::State {
    std::shared_ptr<const TextModel> model;
    const GuardFormat * format = nullptr;
    ChatFrame frame;
    std::vector<llama_token> head;    // template head + the format's fixed instruction
    std::atomic<const CancelToken *> cancel{nullptr};
    llama_context_ptr ctx;
    bool head_cached = false;         // `head` occupies the first cells of sequence 0
    std::mutex mutex;

    const TextWeights & weights() const { return model->impl().weights(); }

    // Evaluates `tokens` from position `pos` in batches of n_batch; the last one's logits are kept.
    void decode(const std::vector<llama_token> & tokens, const char * what) {
        const size_t n_batch = llama_n_batch(ctx.get());
        for (size_t i = 0; i < tokens.size(); i += n_batch) {
            std::vector<llama_token> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(i),
                                           tokens.begin() + static_cast<std::ptrdiff_t>(std::min(tokens.size(), i + n_batch)));
            clear_log_errors();
            const int32_t status = llama_decode(ctx.get(), llama_batch_get_one(chunk.data(), static_cast<int32_t>(chunk.size())));
            if (status == 2 && cancel.load() != nullptr && cancel.load()->cancelled()) {
                head_cached = false;  // an aborted batch leaves its cells undefined
                throw CancelledError("cancelled during step 'judge' (judge model)");
            }
            if (status != 0) {
                head_cached = false;
                throw RuntimeFailure(std::string("the judge model could not evaluate ") + what + last_log_suffix());
            }
        }
    }
};

GuardJudge::GuardJudge(std::shared_ptr<const TextModel> model, const std::string & format)
    : state_(std::make_unique<State>()) {
    State & s = *state_;
    s.model = std::move(model);
    s.format = &guard_format(format);
    if (s.format->chat_turn) {
        const std::string tmpl = s.model->chat_template();
        if (tmpl.empty()) {
            throw ConfigError("judge model '" + s.model->path() + "' has no chat template in its GGUF, and the '" +
                              s.format->name + "' format is framed by a chat template: give one of llama.cpp's "
                              "built-in names (TextModel(chat_template=...), --judge-chat-template)");
        }
        try {
            s.frame = ChatFrame::of_template(tmpl, s.model->own_chat_template().empty() ? tmpl : "model", "");
        } catch (const ConfigError & e) {
            throw ConfigError("judge model '" + s.model->path() + "': " + e.what());
        }
    }
    // The format's fixed texts are the card's and may hold the model's control tokens (ShieldGemma
    // writes its turns out); the query and the answer never do (see judge()).
    s.head = s.weights().tokenize(s.frame.head + s.format->head(), true, true);
    const ModelOptions & o = s.weights().options();
    s.ctx = make_context(s.weights(), ContextOwner::JudgeModel, 1, o.n_ctx, std::min(o.n_batch, o.n_ctx), 1,
                         &abort_if_cancelled, &s.cancel);
}

GuardJudge::~GuardJudge() = default;

const TextModel & GuardJudge::model() const { return *state_->model; }
const GuardFormat & GuardJudge::format() const { return *state_->format; }

GuardOutcome GuardJudge::judge(const std::string & query, const std::string & response, const CancelToken * cancel,
                               const ProgressSink * progress) {
    State & s = *state_;
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto t0 = Clock::now();
    const TextWeights & w = s.weights();
    // The parts are tokenized apart (a fresh context's evaluation takes the same tokens): the
    // query's and the answer's text can never become a control token of the guard's vocabulary.
    const std::vector<GuardFormat::Part> parts = s.format->message_parts(query, response);
    std::vector<llama_token> rest;
    for (size_t i = 1; i < parts.size(); ++i) {  // parts[0] is head(), in the cells already
        const auto t = w.tokenize(parts[i].text, false, parts[i].fixed);
        rest.insert(rest.end(), t.begin(), t.end());
    }
    for (const std::string & text : {s.frame.tail, s.format->assistant_prefix}) {
        const auto t = w.tokenize(text, false, true);
        rest.insert(rest.end(), t.begin(), t.end());
    }

    GuardOutcome out;
    StepRecord & rec = out.record;
    rec.name = "judge";
    rec.prompt_tokens = static_cast<int32_t>(s.head.size() + rest.size());
    rec.input_tokens.assign(s.head.begin(), s.head.end());
    rec.input_tokens.insert(rec.input_tokens.end(), rest.begin(), rest.end());
    const int64_t n_ctx = llama_n_ctx(s.ctx.get());
    if (rec.prompt_tokens + int64_t{s.format->max_tokens} > n_ctx) {
        throw ContextOverflowError("the judge model's prompt needs " + std::to_string(rec.prompt_tokens) + " + " +
                                   std::to_string(s.format->max_tokens) + " positions, more than its n_ctx " +
                                   std::to_string(n_ctx) + ". Load the judge model with a larger n_ctx");
    }
    s.cancel.store(cancel);
    struct Disarm {
        std::atomic<const CancelToken *> & c;
        ~Disarm() { c.store(nullptr); }
    } disarm{s.cancel};
    auto throw_if_cancelled = [&] {
        if (cancel != nullptr && cancel->cancelled()) {
            throw CancelledError("cancelled during step 'judge' (judge model)");
        }
    };
    auto report = [&](const char * phase, int32_t done, int32_t total) {
        if (progress != nullptr && *progress) {
            (*progress)(Progress{"judge", phase, done, total});
        }
    };
    throw_if_cancelled();
    const auto t_prefill = Clock::now();
    llama_memory_t mem = llama_get_memory(s.ctx.get());
    if (s.head_cached) {
        llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(s.head.size()), -1);
        rec.tokens_reused = static_cast<int32_t>(s.head.size());
    } else {
        llama_memory_clear(mem, true);
        report("prefill", 0, rec.prompt_tokens);
        s.decode(s.head, "its prompt's head");
        s.head_cached = true;
        rec.tokens_prefilled += static_cast<int32_t>(s.head.size());
    }
    report("prefill", rec.tokens_reused, rec.prompt_tokens);
    s.decode(rest, "the answer to judge");
    rec.tokens_prefilled += static_cast<int32_t>(rest.size());
    rec.prefill_seconds = since(t_prefill);

    const auto t_decode = Clock::now();
    const int32_t n_vocab = llama_vocab_n_tokens(w.vocab());
    std::string raw;
    Utf8Decoder decoder;
    rec.stop_reason = "length";
    while (rec.tokens_generated < s.format->max_tokens) {
        throw_if_cancelled();
        const float * logits = llama_get_logits_ith(s.ctx.get(), -1);
        const llama_token token = static_cast<llama_token>(std::max_element(logits, logits + n_vocab) - logits);
        if (w.is_end_of_generation(token)) {
            rec.stop_reason = "eos";
            break;
        }
        rec.tokens.push_back(token);
        rec.tokens_generated += 1;
        raw += decoder.push(w.token_piece(token));
        report("generate", rec.tokens_generated, s.format->max_tokens);
        if (rec.tokens_generated == s.format->max_tokens) {
            break;
        }
        s.decode({token}, "its verdict");
    }
    raw += decoder.finish();
    rec.decode_seconds = since(t_decode);
    rec.text = strip(raw);
    rec.seconds = since(t0);
    out.verdict = s.format->parse(raw);
    const std::string & path = s.model->path();
    out.judge_model = path.substr(path.find_last_of('/') + 1);
    return out;
}

void record_guard_step(EcsoResult & result, GuardOutcome outcome) {
    result.verdict_text = outcome.record.text;
    result.steps.push_back(std::move(outcome.record));
    result.judged_unsafe = outcome.verdict.unsafe.value_or(true);
    result.judge_parsed = outcome.verdict.unsafe.has_value();
    result.judge_categories = std::move(outcome.verdict.categories);
    result.judge_model = std::move(outcome.judge_model);
}

}  // namespace ecso
