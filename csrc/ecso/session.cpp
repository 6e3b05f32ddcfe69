// EcsoSession (see session.hpp): checks the config, builds the chat frame and the slots, hands a
// free slot to each call and runs the call's plan on it with the call's token installed.
#include "ecso/session.hpp"
#include "ecso/session_impl.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

#include <condition_variable>
#include <mutex>
#include <optional>

#include "ecso/batch_scheduler.hpp"
#include "ecso/conversation_cache.hpp"
#include "ecso/conversation_plan.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/errors.hpp"
#include "ecso/fnv_hash.hpp"
#include "ecso/guard_judge.hpp"
#include "ecso/model_impl.hpp"
#include "ecso/prompt.hpp"
#include "ecso/single_turn_plan.hpp"

namespace ecso {
namespace {

// One fingerprint per message: its role, its text and its images' content, so a follow-up turn
// (the previous messages, the answer, a new question) shares a prefix of fingerprints with the
// turn it continues.
std::vector<uint64_t> fingerprints(const Conversation & messages) {
    std::vector<uint64_t> out;
    for (const ChatMessage & m : messages) {
        std::string key = m.role + '\0';
        for (const ChatPart & part : m.content) {
            key += part.image ? "\1" + image_content_id(*part.image) : "\2" + part.text;
            key += '\0';
        }
        // FNV-1a rather than std::hash: the fingerprints go into state files, read by other builds
        Fnv1a64 h;
        h.add(key.data(), key.size());
        out.push_back(h.value);
    }
    return out;
}

size_t shared_prefix(const std::vector<uint64_t> & a, const std::vector<uint64_t> & b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) {
        ++n;
    }
    return n;
}

}  // namespace

EcsoSession::Impl::Impl(std::shared_ptr<const Model> model, EcsoConfig config, int parallel,
                        std::shared_ptr<const TextModel> judge_model, const std::string & judge_format)
    : model_(std::move(model)), config_(std::move(config)) {
    if (!model_) {
        throw ConfigError("a session needs a loaded model");
    }
    if (parallel < 1 || parallel > kMaxParallel) {
        throw ConfigError("parallel must be from 1 to " + std::to_string(kMaxParallel) + " (got " +
                          std::to_string(parallel) + "): the requests that run together in one context");
    }
    config_.validate();
    frame_ = ChatFrame::build(*model_, config_);
    if (judge_model) {
        // A guard reads the whole answer after step 1, in its own prompt format: the modes that
        // judge during step 1 or read the vision model's own logits have no meaning for it.
        if (config_.judge_layout != JudgeLayout::Paper || config_.judge_mode != JudgeMode::Final ||
            config_.shadow_judge || config_.verdict_rule == VerdictRule::Logits) {
            throw ConfigError("a judge model judges the finished answer: use judge_layout 'paper', judge_mode "
                              "'final', shadow_judge false and a text verdict_rule with it");
        }
        guard_ = std::make_unique<GuardJudge>(std::move(judge_model), judge_format);
    } else if (!judge_format.empty()) {
        throw ConfigError("judge_format '" + judge_format + "' was given without a judge model");
    }
    if (parallel > 1) {
        scheduler_ = std::make_unique<BatchScheduler>(model_, parallel, DecodingEngine::kNumSequences);
    }
    for (int i = 0; i < parallel; ++i) {
        auto slot = std::make_unique<Slot>();
        slot->engine = scheduler_ ? std::make_unique<DecodingEngine>(model_, config_, *scheduler_, i)
                                  : std::make_unique<DecodingEngine>(model_, config_);
        slot->conversations.share(model_->impl().sequence_store(), config_.reuse_answer_cells);
        slots_.push_back(std::move(slot));
    }
}

// The engines go before the scheduler whose context they use.
EcsoSession::Impl::~Impl() { slots_.clear(); }

uint32_t EcsoSession::Impl::n_ctx() const { return slots_.front()->engine->n_ctx(); }

void EcsoSession::Impl::cancel() {
    for (auto & slot : slots_) {
        slot->engine->cancel();
    }
}

size_t EcsoSession::Impl::acquire(const Conversation * messages, const CancelToken * cancel, bool join) {
    const std::vector<uint64_t> prints = messages ? fingerprints(*messages) : std::vector<uint64_t>();
    // A cancel wakes the wait below. Taking the slots' lock before notifying means the cancel
    // lands either before the waiter looks at the token or while it waits, never in between.
    std::optional<CancelToken::WakeGuard> wake;
    if (cancel != nullptr) {
        wake.emplace(*cancel, [this] {
            { std::lock_guard<std::mutex> held(slots_mutex_); }
            slot_freed_.notify_all();
        });
    }
    std::unique_lock<std::mutex> lock(slots_mutex_);
    for (;;) {
        // A conversation: the free slot that holds the most of it; with none, the one least
        // recently used (its caches are the oldest), as llama-server picks a slot. A single-turn
        // request: the first free slot, whose kept template head it may reuse.
        size_t best = slots_.size();
        size_t best_shared = 0;
        for (size_t i = 0; i < slots_.size(); ++i) {
            const Slot & slot = *slots_[i];
            if (slot.busy) {
                continue;
            }
            size_t shared = 0;
            for (const auto & h : slot.history) {
                shared = std::max(shared, shared_prefix(prints, h));
            }
            const bool better = best == slots_.size() ||
                                (messages != nullptr && (shared > best_shared || (shared == best_shared &&
                                                                                 slot.last_used < slots_[best]->last_used)));
            if (better) {
                best = i;
                best_shared = shared;
            }
        }
        if (best < slots_.size()) {
            Slot & slot = *slots_[best];
            slot.busy = true;
            slot.last_used = ++tick_;
            if (messages != nullptr) {
                constexpr size_t kKept = 8;
                slot.history.insert(slot.history.begin(), prints);
                if (slot.history.size() > kKept) {
                    slot.history.pop_back();
                }
            }
            if (join && scheduler_) {
                scheduler_->join(static_cast<int>(best));
            }
            return best;
        }
        if (cancel != nullptr && cancel->cancelled()) {
            throw CancelledError("cancelled while waiting for a free slot");
        }
        ++waiting_;
        slot_freed_.wait(lock);
        --waiting_;
    }
}

void EcsoSession::Impl::release(size_t index, bool leave) {
    {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        if (leave && scheduler_) {
            scheduler_->leave(static_cast<int>(index));
        }
        slots_[index]->busy = false;
    }
    slot_freed_.notify_all();
}

EcsoResult EcsoSession::Impl::run_item(size_t index, const BatchItem & item, const CallOptions & given) {
    Slot & slot = *slots_[index];
    // A lane away in a caller's sink (a slow client, a blocked stream) must not hold the rounds
    // of the others: it leaves them for the call and joins again after. Progress from an encode
    // comes on the scheduler's thread, inside a round the lane is parked in.
    CallOptions call = given;
    struct Away {
        BatchScheduler & rounds;
        int lane;
        Away(BatchScheduler & r, int l) : rounds(r), lane(l) { rounds.leave(lane); }
        ~Away() { rounds.join(lane); }
    };
    if (scheduler_) {
        BatchScheduler & rounds = *scheduler_;
        const int lane = static_cast<int>(index);
        if (given.on_text) {
            call.on_text = [&rounds, lane, &given](const std::string & piece) {
                const Away away(rounds, lane);
                given.on_text(piece);
            };
        }
        if (given.on_progress) {
            call.on_progress = [&rounds, lane, &given](const Progress & p) {
                if (rounds.on_scheduler_thread()) {
                    given.on_progress(p);
                    return;
                }
                const Away away(rounds, lane);
                given.on_progress(p);
            };
        }
    }
    if (call.sampling) {
        EcsoConfig checked = config_;
        checked.sampling = *call.sampling;
        checked.validate();
    }
    {
        std::lock_guard<std::mutex> lock(slots_mutex_);
        requests_ += 1;
        max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
    }
    struct InFlight {
        Impl & s;
        ~InFlight() {
            std::lock_guard<std::mutex> lock(s.slots_mutex_);
            --s.in_flight_;
        }
    } in_flight{*this};
    DecodingEngine & engine = *slot.engine;
    DecodingEngine::ActiveCall active(engine, call);
    // The guard runs in its own context, outside the rounds: a lane leaves them meanwhile, and the
    // guard's progress goes to the caller's sink directly.
    GuardStep guard_step;
    if (guard_) {
        guard_step = [this, index, &engine, &given](const std::string & query, const std::string & response) {
            std::optional<Away> away;
            if (scheduler_) {
                away.emplace(*scheduler_, static_cast<int>(index));
            }
            return guard_->judge(query, response, engine.active_cancel(), given.on_progress ? &given.on_progress : nullptr);
        };
    }
    const GuardStep * guard = guard_ ? &guard_step : nullptr;
    if (item.messages) {
        return ConversationPlan(engine, frame_, slot.conversations, guard).run(*item.messages, call, item.protect);
    }
    if (item.response) {
        return SingleTurnPlan(engine, frame_, guard).judge(item.image, item.query, *item.response);
    }
    return SingleTurnPlan(engine, frame_, guard).run(item.image, item.query, call, item.protect);
}

EcsoResult EcsoSession::Impl::run(const RgbImage & image, const std::string & query, const CallOptions & call) {
    Lease lease(*this, nullptr, call.cancel.get(), true);
    return run_item(lease.slot_index(), BatchItem{image, query, std::nullopt, true}, call);
}

EcsoResult EcsoSession::Impl::answer(const RgbImage & image, const std::string & query, const CallOptions & call) {
    Lease lease(*this, nullptr, call.cancel.get(), true);
    return run_item(lease.slot_index(), BatchItem{image, query, std::nullopt, false}, call);
}

EcsoResult EcsoSession::Impl::judge(const RgbImage & image, const std::string & query, const std::string & response,
                              const CallOptions & call) {
    Lease lease(*this, nullptr, call.cancel.get(), true);
    BatchItem item{image, query, std::nullopt, true, response};
    return run_item(lease.slot_index(), item, call);
}

EcsoResult EcsoSession::Impl::chat(const Conversation & messages, const CallOptions & call, bool protect) {
    Lease lease(*this, &messages, call.cancel.get(), true);
    BatchItem item;
    item.messages = messages;
    item.protect = protect;
    return run_item(lease.slot_index(), item, call);
}

void EcsoSession::Impl::run_many(size_t n, const ItemSource & source, const ItemSink & sink, const CallOptions & call) {
    if (n == 0) {
        return;
    }
    const std::shared_ptr<CancelToken> token = call.cancel ? call.cancel : std::make_shared<CancelToken>();
    CallOptions item_call;
    item_call.max_tokens = call.max_tokens;
    item_call.cancel = token;
    // Every lane is held and has joined before the first hand-out, so the first round already
    // sees them all.
    const size_t lanes = std::min(n, slots_.size());
    std::vector<std::unique_ptr<Lease>> leases;
    for (size_t i = 0; i < lanes; ++i) {
        leases.push_back(std::make_unique<Lease>(*this, nullptr, token.get(), true));
    }
    if (scheduler_ && lanes == slots_.size()) {
        // The run holds every slot: it starts from an empty cell pool, as a new session does, so
        // where its cells land (and so how its sums round) is the same on every run.
        for (auto & slot : slots_) {
            slot->engine->forget_single_turn();
        }
        std::lock_guard<std::mutex> lock(scheduler_->context_mutex());
        llama_memory_clear(llama_get_memory(scheduler_->ctx()), true);
        for (auto & slot : slots_) {
            slot->engine->kv().forget();
        }
    }
    std::exception_ptr stop;  // a sink's exception, or the cancel: ends the whole run
    std::mutex stop_mutex;
    if (scheduler_) {
        scheduler_->reset_items(static_cast<int64_t>(n));
    }
    size_t next_direct = 0;  // parallel = 1: items in order on the calling thread
    auto run_lane = [&](Lease & lease) {
        for (;;) {
            int64_t index = -1;
            if (scheduler_) {
                index = scheduler_->take_item(lease.index());
            } else if (next_direct < n) {
                index = static_cast<int64_t>(next_direct++);
            }
            if (index < 0) {
                return;
            }
            {
                std::lock_guard<std::mutex> lock(stop_mutex);
                if (stop || token->cancelled()) {
                    continue;  // hand-outs go on until none is left, so every lane leaves the rounds
                }
            }
            const auto i = static_cast<size_t>(index);
            std::optional<EcsoResult> result;
            std::exception_ptr error;
            try {
                result = run_item(lease.slot_index(), source(i), item_call);
            } catch (...) {
                error = std::current_exception();
            }
            if (token->cancelled()) {
                std::lock_guard<std::mutex> lock(stop_mutex);
                if (!stop) {
                    stop = std::make_exception_ptr(CancelledError("run_many was cancelled"));
                }
                continue;
            }
            try {
                sink(i, result ? &*result : nullptr, error);
            } catch (...) {
                std::lock_guard<std::mutex> lock(stop_mutex);
                if (!stop) {
                    stop = std::current_exception();
                }
                token->cancel();
            }
        }
    };
    if (lanes == 1) {
        run_lane(*leases.front());
    } else {
        std::vector<std::thread> threads;
        for (auto & lease : leases) {
            threads.emplace_back([&run_lane, &lease] { run_lane(*lease); });
        }
        for (auto & t : threads) {
            t.join();
        }
    }
    leases.clear();
    if (stop) {
        std::rethrow_exception(stop);
    }
}

EngineStats EcsoSession::Impl::engine_stats() {
    EngineStats out;
    if (scheduler_) {
        out = scheduler_->stats();
    } else {
        out = slots_.front()->engine->own_stats();
    }
    std::lock_guard<std::mutex> lock(slots_mutex_);
    out.requests = requests_;
    out.max_in_flight = max_in_flight_;
    out.waiting = waiting_;
    return out;
}

CacheStats EcsoSession::Impl::cache_stats() {
    CacheStats total;
    for (size_t i = 0; i < slots_.size(); ++i) {
        // Each slot in turn, once no call uses it: its cache is its call's while it runs.
        std::unique_lock<std::mutex> lock(slots_mutex_);
        slot_freed_.wait(lock, [&] { return !slots_[i]->busy; });
        total += slots_[i]->conversations.stats(slots_[i]->engine->embeddings());
    }
    return total;
}

void EcsoSession::Impl::clear_cache() {
    for (size_t i = 0; i < slots_.size(); ++i) {
        std::unique_lock<std::mutex> lock(slots_mutex_);
        slot_freed_.wait(lock, [&] { return !slots_[i]->busy; });
        slots_[i]->conversations.clear(slots_[i]->engine->embeddings());
        slots_[i]->history.clear();
    }
}

EcsoSession::EcsoSession(std::shared_ptr<const Model> model, EcsoConfig config, int parallel,
                         std::shared_ptr<const TextModel> judge_model, const std::string & judge_format)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(config), parallel, std::move(judge_model),
                                   judge_format)) {}
EcsoSession::~EcsoSession() = default;

EcsoResult EcsoSession::run(const RgbImage & image, const std::string & query, const CallOptions & call) {
    return impl_->run(image, query, call);
}

void EcsoSession::save_state(const std::string & path) { impl_->save_state(path); }
CacheStats EcsoSession::load_state(const std::string & path) { return impl_->load_state(path); }
EcsoResult EcsoSession::answer(const RgbImage & image, const std::string & query, const CallOptions & call) {
    return impl_->answer(image, query, call);
}
EcsoResult EcsoSession::judge(const RgbImage & image, const std::string & query, const std::string & response,
                              const CallOptions & call) {
    return impl_->judge(image, query, response, call);
}
EcsoResult EcsoSession::chat(const Conversation & messages, const CallOptions & call, bool protect) {
    return impl_->chat(messages, call, protect);
}
CacheStats EcsoSession::cache_stats() { return impl_->cache_stats(); }
void EcsoSession::clear_cache() { impl_->clear_cache(); }
void EcsoSession::run_many(size_t n, const ItemSource & source, const ItemSink & sink, const CallOptions & call) {
    impl_->run_many(n, source, sink, call);
}
EngineStats EcsoSession::engine_stats() { return impl_->engine_stats(); }
int EcsoSession::parallel() const { return impl_->parallel(); }
void EcsoSession::cancel() { impl_->cancel(); }
const EcsoConfig & EcsoSession::config() const { return impl_->config(); }
const ChatFrame & EcsoSession::frame() const { return impl_->frame(); }
const Model & EcsoSession::model() const { return impl_->model(); }
std::string EcsoSession::judge_model() const {
    if (impl_->guard() == nullptr) {
        return "self";
    }
    const std::string & path = impl_->guard()->model().path();
    return path.substr(path.find_last_of('/') + 1);
}
std::string EcsoSession::judge_format() const { return impl_->guard() ? impl_->guard()->format().name : ""; }
uint32_t EcsoSession::n_ctx() const { return impl_->n_ctx(); }

}  // namespace ecso
