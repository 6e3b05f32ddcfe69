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
#include <functional>
#include <list>
#include <mutex>
#include <utility>

namespace ecso {

class CancelToken {
public:
    void cancel() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            flag_.store(true);
            for (const auto & wake : wakers_) {
                wake();
            }
        }
        changed_.notify_all();
    }

    // While the returned guard lives, cancel() also calls `wake`, so a wait on another condition
    // variable (a free slot, say) ends at the cancel instead of polling the token. `wake` runs on
    // the cancelling thread with the token's lock held: it must not call back into this token, and
    // a waiter must take the guard before any lock that `wake` takes.
    class WakeGuard {
    public:
        WakeGuard(const CancelToken & token, std::function<void()> wake) : token_(token) {
            std::lock_guard<std::mutex> lock(token_.mutex_);
            it_ = token_.wakers_.insert(token_.wakers_.end(), std::move(wake));
        }
        ~WakeGuard() {
            std::lock_guard<std::mutex> lock(token_.mutex_);
            token_.wakers_.erase(it_);
        }
        WakeGuard(const WakeGuard &) = delete;
        WakeGuard & operator=(const WakeGuard &) = delete;

    private:
        const CancelToken & token_;
        std::list<std::function<void()>>::iterator it_;
    };

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
    mutable std::list<std::function<void()>> wakers_;
};

}  // namespace ecso
