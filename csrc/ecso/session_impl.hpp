// EcsoSession's insides (see session.hpp), shared by session.cpp (calls and slots) and
// session_state.cpp (the state file). Internal: it names the core's llama.cpp-facing types.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ecso/batch_scheduler.hpp"
#include "ecso/conversation_cache.hpp"
#include "ecso/decoding_engine.hpp"
#include "ecso/guard_judge.hpp"
#include "ecso/session.hpp"

namespace ecso {

// What a session holds: its slots, their engines and the scheduler they share.
class EcsoSession::Impl {
public:
    Impl(std::shared_ptr<const Model> model, EcsoConfig config, int parallel,
         std::shared_ptr<const TextModel> judge_model, const std::string & judge_format);
    ~Impl();

    EcsoResult run(const RgbImage & image, const std::string & query, const CallOptions & call);
    EcsoResult answer(const RgbImage & image, const std::string & query, const CallOptions & call);
    EcsoResult judge(const RgbImage & image, const std::string & query, const std::string & response,
                     const CallOptions & call);
    EcsoResult chat(const Conversation & messages, const CallOptions & call, bool protect);
    CacheStats cache_stats();
    void clear_cache();
    void run_many(size_t n, const ItemSource & source, const ItemSink & sink, const CallOptions & call);
    EngineStats engine_stats();
    int parallel() const { return static_cast<int>(slots_.size()); }
    void cancel();
    const EcsoConfig & config() const { return config_; }
    const ChatFrame & frame() const { return frame_; }
    const Model & model() const { return *model_; }
    const GuardJudge * guard() const { return guard_.get(); }
    uint32_t n_ctx() const;

    // The state file (session_state.cpp): every slot's conversation cache and history.
    void save_state(const std::string & path);
    CacheStats load_state(const std::string & path);

private:
    // Takes every slot, waiting for the calls on them to end; gives them back when destroyed.
    class AllSlots;
    // What the cells of a saved sequence depend on, as "key=value" lines.
    std::string state_fingerprint() const;
    struct Slot {
        std::unique_ptr<DecodingEngine> engine;
        ConversationCache conversations;
        // Message fingerprints of the conversations it answered last (newest first, a few kept,
        // as its cache keeps a few), and when it last took a call.
        std::vector<std::vector<uint64_t>> history;
        uint64_t last_used = 0;
        bool busy = false;
    };
    class Lease;
    // Waits for a free slot: for a conversation, the free one whose last conversation it
    // continues (as llama-server picks a slot by prompt similarity). `join`: a lane of the
    // scheduler joins its rounds.
    size_t acquire(const Conversation * messages, const CancelToken * cancel, bool join);
    void release(size_t slot, bool leave);
    EcsoResult run_item(size_t slot, const BatchItem & item, const CallOptions & call);

    std::shared_ptr<const Model> model_;
    EcsoConfig config_;
    ChatFrame frame_;
    std::unique_ptr<BatchScheduler> scheduler_;  // null with parallel = 1
    std::unique_ptr<GuardJudge> guard_;          // null: the vision model judges itself
    std::vector<std::unique_ptr<Slot>> slots_;
    std::mutex slots_mutex_;
    std::condition_variable slot_freed_;
    uint64_t requests_ = 0;
    uint64_t tick_ = 0;  // for Slot::last_used
    int in_flight_ = 0;
    int max_in_flight_ = 0;
    int waiting_ = 0;  // calls in acquire() with every slot busy
};

// Holds a slot for one call (or one run_many lane) and gives it back, whatever happens.
class EcsoSession::Impl::Lease {
public:
    Lease(Impl & session, const Conversation * messages, const CancelToken * cancel, bool join)
        : session_(session), index_(session.acquire(messages, cancel, join)), join_(join) {}
    ~Lease() { session_.release(index_, join_); }
    Lease(const Lease &) = delete;
    Lease & operator=(const Lease &) = delete;
    size_t slot_index() const { return index_; }
    int index() const { return static_cast<int>(index_); }

private:
    Impl & session_;
    size_t index_;
    bool join_;
};

}  // namespace ecso
