// BatchScheduler: one llama_context shared by the lanes of a parallel session, and the thread that
// runs every operation on it. Each lane is one request at a time (its own KV sequences, sampler,
// budgets, cancel token and sinks: a DecodingEngine in lane mode); the scheduler merges the token
// work of every lane into one llama_batch per round, so N generating requests cost one decode.
//
// Rounds. A lane that wants the context parks with its work and waits. When every active lane is
// parked, the scheduler runs one round: at most one solo item (an image encode, an image chunk's
// embeddings, a state restore: work that cannot share a batch), then one llama_decode of all the
// parked token work, in lane order. Each lane's token work is at most lane_batch() tokens (one per
// generating sequence, a bounded chunk of prompt), so the merged batch always fits and a long
// prompt or a new image delays the others by one chunk at most. A round starts only when every
// active lane is parked, so the batches a set of requests forms depend on the requests alone, not
// on thread timing: the same run_many input gives the same batches and the same tokens.
//
// Memory operations (sequence copies and removals, state reads) run on the lane's own thread
// under context_mutex(): a lane runs only between rounds, so they never overlap a decode. Their
// order between lanes does not matter (they free or tag cells of disjoint sequences).
//
// Cells: the context holds n_lanes * lane_n_ctx cells in one unified pool. Every lane keeps its
// own cells within lane_n_ctx (the plans size every step by the engine's n_ctx), so a lane never
// takes a neighbour's room: a request waits for a free lane, never for cells.
//
// Thread safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "ecso/model.hpp"
#include "ecso/stats.hpp"
#include "ecso/token_batch.hpp"
#include "llama-cpp.h"

namespace ecso {

class CancelToken;

class BatchScheduler {
public:
    // Throws ConfigError when the lanes' cells are more than a llama.cpp context counts (a
    // uint32), ResourceError when llama.cpp cannot create the context.
    BatchScheduler(std::shared_ptr<const Model> model, int n_lanes, int seqs_per_lane);
    ~BatchScheduler();
    BatchScheduler(const BatchScheduler &) = delete;
    BatchScheduler & operator=(const BatchScheduler &) = delete;

    int n_lanes() const { return n_lanes_; }
    // The cells one lane may hold: what a session with one lane would have.
    uint32_t lane_n_ctx() const { return lane_n_ctx_; }
    // The most tokens one lane's batch may hold.
    int32_t lane_batch() const { return lane_batch_; }
    llama_context * ctx() { return ctx_.get(); }
    std::mutex & context_mutex() { return context_mutex_; }
    bool on_scheduler_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

    // A lane takes part in rounds between join() and leave(); join() waits for the round in
    // progress to end. leave() frees nothing: the lane drops its own cells first. A lane may also
    // leave for a while (in a caller's callback) and join again.
    void join(int lane);
    void leave(int lane);

    // Evaluates `batch` (its sequence ids already the lane's) in the next round, merged with the
    // other lanes' work; returns llama_decode's status for the merged batch. On success the logits
    // of each row `batch` asked logits for are copied to `logits` (n_vocab floats per row, in row
    // order).
    int32_t decode(int lane, const TokenBatch & batch, std::vector<float> & logits);

    // Runs `work` alone on the scheduler's thread in the next round and returns its result (an
    // exception it throws is re-thrown here). `cancel`: the lane's token, which llama.cpp's abort
    // callback reads while `work` decodes.
    int32_t run_solo(int lane, const std::function<int32_t()> & work, const CancelToken * cancel);

    // run_many's hand-out: the next item index for `lane`, given at the start of a round so that
    // the item a lane gets does not depend on thread timing; -1 when none is left (the lane has
    // then left the rounds). `reset_items(n)` arms it for n items.
    void reset_items(int64_t n);
    int64_t take_item(int lane);

    EngineStats stats() const;  // decode_calls, batched_tokens and rounds
    // Counts decodes a solo item made (an image's embeddings through mtmd's helper).
    void count_decodes(uint64_t calls, uint64_t tokens);

private:
    enum class Kind { None, Tokens, Solo, Item };
    struct Work {
        Kind kind = Kind::None;
        const TokenBatch * batch = nullptr;
        std::vector<float> * logits = nullptr;
        const std::function<int32_t()> * solo = nullptr;
        const CancelToken * cancel = nullptr;
        int32_t status = 0;
        int64_t item = -1;
        std::exception_ptr error;
        bool done = false;
    };
    struct Lane {
        bool active = false;
        Work * work = nullptr;  // set while parked
    };

    // Parks `lane` with `work` until a round has served it.
    void park(int lane, Work & work);
    void loop();
    // One round over the parked lanes (context_mutex_ held, state_mutex_ not).
    // Returns the seconds its solo work took (the rest of the round is the merged decode).
    double run_round(const std::vector<int> & solo, const std::vector<int> & tokens);
    static bool abort_requested(void * scheduler);

    std::shared_ptr<const Model> model_;
    int n_lanes_;
    uint32_t lane_n_ctx_ = 0;
    int32_t lane_batch_ = 0;
    llama_context_ptr ctx_;
    std::unique_ptr<TokenBatch> merged_;
    std::mutex context_mutex_;  // every use of ctx_

    mutable std::mutex state_mutex_;  // lanes_, counters, items, stop_
    std::condition_variable parked_;  // a lane parked or left: the scheduler may start a round
    std::condition_variable served_;  // a round ended: parked lanes check their work
    std::vector<Lane> lanes_;
    int active_ = 0;
    int parked_count_ = 0;
    bool in_round_ = false;
    int next_solo_ = 0;  // round-robin start among lanes with solo work
    int64_t items_total_ = 0;
    int64_t items_next_ = 0;
    EngineStats stats_;
    // When the last round ended with lanes still active; unset once none is (an idle session's
    // wait for new requests is no gap).
    std::optional<std::chrono::steady_clock::time_point> round_ended_;
    bool stop_ = false;
    std::atomic<const CancelToken *> solo_cancel_{nullptr};
    std::thread thread_;
};

}  // namespace ecso
