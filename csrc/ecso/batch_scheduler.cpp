// The rounds of a parallel session's shared context (see batch_scheduler.hpp).
#include "ecso/batch_scheduler.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ecso/cancel_token.hpp"
#include "ecso/context_factory.hpp"
#include "ecso/errors.hpp"
#include "ecso/model_impl.hpp"

namespace ecso {

BatchScheduler::BatchScheduler(std::shared_ptr<const Model> model, int n_lanes, int seqs_per_lane)
    : model_(std::move(model)), n_lanes_(n_lanes), lanes_(static_cast<size_t>(n_lanes)) {
    const ModelOptions & opts = model_->options();
    // A lane's budget is what a one-lane session's context holds (llama.cpp pads n_ctx to 256).
    // Counted in 64 bits: llama.cpp takes the cells as a uint32, and a product that wrapped
    // around made a context of another size (0: the model's training length) without an error.
    const uint64_t lane_cells = (uint64_t{opts.n_ctx} + 255) / 256 * 256;
    const uint64_t cells = lane_cells * static_cast<uint64_t>(n_lanes);
    if (cells > UINT32_MAX) {
        throw ConfigError("parallel " + std::to_string(n_lanes) + " with n_ctx " + std::to_string(opts.n_ctx) +
                          " needs a context of " + std::to_string(cells) + " cells, more than the " +
                          std::to_string(UINT32_MAX) + " a llama.cpp context holds. Lower n_ctx or parallel");
    }
    lane_n_ctx_ = static_cast<uint32_t>(lane_cells);
    const uint32_t n_batch = std::min(opts.n_batch, opts.n_ctx);
    lane_batch_ = std::max<int32_t>(static_cast<int32_t>(kMinBatch), static_cast<int32_t>(n_batch) / n_lanes);
    const uint32_t merged = std::max<uint32_t>(n_batch, static_cast<uint32_t>(lane_batch_) * n_lanes);
    ctx_ = make_context(model_->impl().text(), ContextOwner::Session, n_lanes, static_cast<uint32_t>(cells), merged,
                        static_cast<uint32_t>(n_lanes * seqs_per_lane), &BatchScheduler::abort_requested, this);
    merged_ = std::make_unique<TokenBatch>(static_cast<int32_t>(llama_n_batch(ctx_.get())));
    thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
    {
        std::lock_guard<std::mutex> lock(state_mutex_);
        stop_ = true;
    }
    parked_.notify_all();
    thread_.join();
}

bool BatchScheduler::abort_requested(void * scheduler) {
    // Only a solo item, which is one lane's, may be aborted: a merged batch serves every lane.
    const CancelToken * token = static_cast<BatchScheduler *>(scheduler)->solo_cancel_.load();
    return token != nullptr && token->cancelled();
}

void BatchScheduler::join(int lane) {
    std::unique_lock<std::mutex> lock(state_mutex_);
    served_.wait(lock, [&] { return !in_round_; });
    Lane & l = lanes_[static_cast<size_t>(lane)];
    if (!l.active) {
        l.active = true;
        ++active_;
    }
}

void BatchScheduler::leave(int lane) {
    {
        std::lock_guard<std::mutex> lock(state_mutex_);
        Lane & l = lanes_[static_cast<size_t>(lane)];
        if (l.active) {
            l.active = false;
            --active_;
        }
        if (active_ == 0) {
            round_ended_.reset();
        }
    }
    parked_.notify_all();  // the others may all be parked now
}

void BatchScheduler::count_decodes(uint64_t calls, uint64_t tokens) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    stats_.decode_calls += calls;
    stats_.batched_tokens += tokens;
}

EngineStats BatchScheduler::stats() const {
    std::lock_guard<std::mutex> lock(state_mutex_);
    return stats_;
}

void BatchScheduler::park(int lane, Work & work) {
    std::unique_lock<std::mutex> lock(state_mutex_);
    Lane & l = lanes_[static_cast<size_t>(lane)];
    if (!l.active) {
        throw RuntimeFailure("internal: a lane used the shared context without joining it");
    }
    l.work = &work;
    ++parked_count_;
    parked_.notify_all();
    served_.wait(lock, [&] { return work.done; });
}

int32_t BatchScheduler::decode(int lane, const TokenBatch & batch, std::vector<float> & logits) {
    Work work;
    work.kind = Kind::Tokens;
    work.batch = &batch;
    work.logits = &logits;
    park(lane, work);
    if (work.error) {
        std::rethrow_exception(work.error);
    }
    return work.status;
}

int32_t BatchScheduler::run_solo(int lane, const std::function<int32_t()> & fn, const CancelToken * cancel) {
    Work work;
    work.kind = Kind::Solo;
    work.solo = &fn;
    work.cancel = cancel;
    park(lane, work);
    if (work.error) {
        std::rethrow_exception(work.error);
    }
    return work.status;
}

void BatchScheduler::reset_items(int64_t n) {
    std::lock_guard<std::mutex> lock(state_mutex_);
    items_total_ = n;
    items_next_ = 0;
    next_solo_ = 0;  // a run starts its rounds as the first run did
}

int64_t BatchScheduler::take_item(int lane) {
    Work work;
    work.kind = Kind::Item;
    park(lane, work);
    return work.item;
}

void BatchScheduler::loop() {
    std::unique_lock<std::mutex> lock(state_mutex_);
    for (;;) {
        parked_.wait(lock, [&] { return stop_ || (active_ > 0 && parked_count_ == active_); });
        if (stop_) {
            return;
        }
        // Items first, in lane order: the lanes that got one run their plan before the next round.
        bool handed_out = false;
        for (int i = 0; i < n_lanes_; ++i) {
            Lane & l = lanes_[static_cast<size_t>(i)];
            if (l.active && l.work != nullptr && l.work->kind == Kind::Item) {
                l.work->item = items_next_ < items_total_ ? items_next_++ : -1;
                if (l.work->item < 0) {
                    l.active = false;  // nothing left: the lane leaves the rounds
                    --active_;
                    if (active_ == 0) {
                        round_ended_.reset();
                    }
                }
                l.work->done = true;
                l.work = nullptr;
                --parked_count_;
                handed_out = true;
            }
        }
        if (handed_out) {
            served_.notify_all();
            continue;
        }
        std::vector<int> solo;
        std::vector<int> tokens;
        for (int k = 0; k < n_lanes_; ++k) {
            const int i = (next_solo_ + k) % n_lanes_;
            const Lane & l = lanes_[static_cast<size_t>(i)];
            if (l.active && l.work != nullptr && l.work->kind == Kind::Solo && solo.empty()) {
                solo.push_back(i);
                next_solo_ = (i + 1) % n_lanes_;
            }
        }
        for (int i = 0; i < n_lanes_; ++i) {
            const Lane & l = lanes_[static_cast<size_t>(i)];
            if (l.active && l.work != nullptr && l.work->kind == Kind::Tokens) {
                tokens.push_back(i);
            }
        }
        using Clock = std::chrono::steady_clock;
        const Clock::time_point start = Clock::now();
        if (round_ended_) {
            stats_.gap_seconds += std::chrono::duration<double>(start - *round_ended_).count();
        }
        in_round_ = true;
        lock.unlock();
        double solo_s = 0;
        {
            std::lock_guard<std::mutex> ctx_lock(context_mutex_);
            solo_s = run_round(solo, tokens);
        }
        lock.lock();
        in_round_ = false;
        const Clock::time_point end = Clock::now();
        stats_.rounds += 1;
        stats_.solo_seconds += solo_s;
        stats_.decode_seconds += std::chrono::duration<double>(end - start).count() - solo_s;
        round_ended_ = end;
        for (const std::vector<int> * served : {&solo, &tokens}) {
            for (int i : *served) {
                Lane & l = lanes_[static_cast<size_t>(i)];
                l.work->done = true;
                l.work = nullptr;
                --parked_count_;
            }
        }
        served_.notify_all();
    }
}

double BatchScheduler::run_round(const std::vector<int> & solo, const std::vector<int> & tokens) {
    // Touches the parked lanes' work only: their threads wait until it is marked done.
    const auto t0 = std::chrono::steady_clock::now();
    for (int i : solo) {
        Work & w = *lanes_[static_cast<size_t>(i)].work;
        solo_cancel_.store(w.cancel);
        try {
            w.status = (*w.solo)();
        } catch (...) {
            w.error = std::current_exception();
        }
        solo_cancel_.store(nullptr);
    }
    const double solo_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (tokens.empty()) {
        return solo_s;
    }
    merged_->clear();
    for (int i : tokens) {
        const llama_batch & b = lanes_[static_cast<size_t>(i)].work->batch->get();
        for (int32_t r = 0; r < b.n_tokens; ++r) {
            merged_->add(b.token[r], b.pos[r], b.seq_id[r][0], b.logits[r] != 0);
        }
    }
    const int32_t status = llama_decode(ctx_.get(), merged_->get());
    count_decodes(1, static_cast<uint64_t>(merged_->size()));
    const int32_t n_vocab = llama_vocab_n_tokens(model_->impl().vocab());
    int32_t row = 0;
    for (int i : tokens) {
        Work & w = *lanes_[static_cast<size_t>(i)].work;
        w.status = status;
        const llama_batch & b = w.batch->get();
        w.logits->clear();
        for (int32_t r = 0; r < b.n_tokens; ++r, ++row) {
            if (status == 0 && b.logits[r] != 0) {
                const float * src = llama_get_logits_ith(ctx_.get(), row);
                w.logits->insert(w.logits->end(), src, src + n_vocab);
            }
        }
    }
    return solo_s;
}

}  // namespace ecso
