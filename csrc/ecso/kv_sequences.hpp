// Bookkeeping of what each KV-cache sequence holds, so a step's prompt can start from the longest
// prefix another sequence already evaluated. With a unified KV cache, llama_memory_seq_cp only
// tags the existing cells with the new sequence id: the prefix is shared, not recomputed or copied.
//
// A parallel session's lane holds sequences [seq_base, seq_base + n_seq) of a context other lanes
// use too: its ids are offset, every call on the context takes the context's mutex, and clear()
// frees the lane's own sequences rather than the whole cache.
#pragma once

#include <mutex>
#include <vector>

#include "ecso/prompt.hpp"
#include "llama.h"

namespace ecso {

class KvSequences {
public:
    KvSequences(llama_context * ctx, int n_seq, int seq_base = 0, std::mutex * ctx_mutex = nullptr);

    struct Prefix {
        int source = -1;        // the sequence holding it, -1 when nothing is shared
        size_t items = 0;       // prompt items covered
        int32_t positions = 0;  // KV positions covered
        int32_t cells = 0;      // and the tokens in them (more with an M-RoPE image)
    };

    // The longest prefix of `items` held by a sequence other than `target` (-1: any), cut to at
    // most `max_items`. Never the whole prompt: its last item must be evaluated again for logits.
    Prefix longest_prefix(const std::vector<PromptItem> & items, int target, size_t max_items) const;

    // Makes `target` hold exactly `prefix` of `items` (empty when prefix.source is -1). The
    // source is first cut to the prefix: ECSO's later steps share no more of it than earlier
    // ones do, and a cache holding only the shared cells lays out the new cells exactly as an
    // empty cache would (same cells, same attention span), which keeps results bit-identical.
    void start_from(int target, const Prefix & prefix, const std::vector<PromptItem> & items);

    // Like start_from, but leaves the source whole (shadow judging: the source is still decoding).
    void share(int target, const Prefix & prefix, const std::vector<PromptItem> & items);

    // Records that `item` was evaluated at the end of `target`.
    void append(int target, const PromptItem & item);

    // Keeps the first `n_items` items of `seq` and frees the rest of its cells.
    void truncate(int seq, size_t n_items);

    // What `seq` holds, item by item (media pointers cleared).
    const std::vector<PromptItem> & held(int seq) const { return contents_[static_cast<size_t>(seq)]; }
    // Records that `seq` now holds `items`, put there by a state restore.
    void adopt(int seq, std::vector<PromptItem> items) { contents_[static_cast<size_t>(seq)] = std::move(items); }

    // Keeps only `prefix` of `items` (cells and all), held by `into`; everything else is freed.
    // An empty prefix empties the cache.
    void keep_only(const Prefix & prefix, int into, const std::vector<PromptItem> & items);

    void drop(int seq);   // frees the sequence's cells that no other sequence uses
    void clear();         // empties the whole cache (a lane: its own sequences)

    int seq_base() const { return seq_base_; }
    // Forgets what every sequence holds, after the owner of the context emptied it.
    void forget() {
        for (auto & c : contents_) {
            c.clear();
        }
    }

private:
    std::unique_lock<std::mutex> lock() const {
        return ctx_mutex_ ? std::unique_lock<std::mutex>(*ctx_mutex_) : std::unique_lock<std::mutex>();
    }
    llama_context * ctx_;
    int seq_base_;
    std::mutex * ctx_mutex_;
    std::vector<std::vector<PromptItem>> contents_;
};

}  // namespace ecso
