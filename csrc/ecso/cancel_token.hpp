// CancelToken: the cancellation of one call. A token belongs to the call it is given to, so a
// cancel that arrives before that call has started is not lost (the call stops at once), and it
// can never stop a later call, which gets a token of its own (llama-server cancels by task id
// for the same reason).
//
// Thread safety: every method may be called from any thread; cancelled() is lock-free (llama.cpp's
// abort callback reads it from compute threads).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

namespace ecso {

class CancelToken {
public:
    void cancel() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            flag_.store(true);
        }
        changed_.notify_all();
    }

    bool cancelled() const { return flag_.load(std::memory_order_relaxed); }

    // Blocks until the token is cancelled or `timeout` passes; true when cancelled. A negative
    // timeout waits without limit.
    bool wait(std::chrono::duration<double> timeout) const {
        std::unique_lock<std::mutex> lock(mutex_);
        if (timeout.count() < 0) {
            changed_.wait(lock, [this] { return flag_.load(); });
            return true;
        }
        return changed_.wait_for(lock, timeout, [this] { return flag_.load(); });
    }

private:
    std::atomic<bool> flag_{false};
    mutable std::mutex mutex_;
    mutable std::condition_variable changed_;
};

}  // namespace ecso
