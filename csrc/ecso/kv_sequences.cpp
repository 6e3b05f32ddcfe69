// Longest-prefix matching and sequence copies over one unified KV cache (see kv_sequences.hpp).
#include "ecso/kv_sequences.hpp"

namespace ecso {

KvSequences::KvSequences(llama_context * ctx, int n_seq, int seq_base, std::mutex * ctx_mutex)
    : ctx_(ctx), seq_base_(seq_base), ctx_mutex_(ctx_mutex), contents_(static_cast<size_t>(n_seq)) {}

KvSequences::Prefix KvSequences::longest_prefix(const std::vector<PromptItem> & items, int target,
                                                size_t max_items) const {
    Prefix best;
    for (size_t seq = 0; seq < contents_.size(); ++seq) {
        if (static_cast<int>(seq) == target) {
            continue;
        }
        const auto & held = contents_[seq];
        size_t n = 0;
        int32_t pos = 0;
        int32_t cells = 0;
        while (n < held.size() && n < items.size() && n < max_items && held[n].same_as(items[n])) {
            pos += items[n].n_pos;
            cells += items[n].n_cells;
            ++n;
        }
        if (n == items.size() && n > 0) {
            --n;  // leave the last item to evaluate
            pos -= items[n].n_pos;
            cells -= items[n].n_cells;
        }
        if (n > best.items) {
            best = {static_cast<int>(seq), n, pos, cells};
        }
    }
    return best;
}

void KvSequences::start_from(int target, const Prefix & prefix, const std::vector<PromptItem> & items) {
    if (prefix.source >= 0) {
        truncate(prefix.source, prefix.items);
    }
    share(target, prefix, items);
}

void KvSequences::share(int target, const Prefix & prefix, const std::vector<PromptItem> & items) {
    drop(target);
    if (prefix.source < 0 || prefix.items == 0) {
        return;
    }
    {
        const auto guard = lock();
        llama_memory_seq_cp(llama_get_memory(ctx_), seq_base_ + prefix.source, seq_base_ + target, 0, prefix.positions);
    }
    auto & held = contents_[static_cast<size_t>(target)];
    for (size_t i = 0; i < prefix.items; ++i) {
        held.push_back(items[i]);
        held.back().media = nullptr;
    }
}

void KvSequences::append(int target, const PromptItem & item) {
    contents_[static_cast<size_t>(target)].push_back(item);
    contents_[static_cast<size_t>(target)].back().media = nullptr;
}

void KvSequences::truncate(int seq, size_t n_items) {
    auto & held = contents_[static_cast<size_t>(seq)];
    if (n_items >= held.size()) {
        return;
    }
    int32_t pos = 0;
    for (size_t i = 0; i < n_items; ++i) {
        pos += held[i].n_pos;
    }
    {
        const auto guard = lock();
        llama_memory_seq_rm(llama_get_memory(ctx_), seq_base_ + seq, pos, -1);
    }
    held.resize(n_items);
}

void KvSequences::keep_only(const Prefix & prefix, int into, const std::vector<PromptItem> & items) {
    if (prefix.source < 0 || prefix.items == 0) {
        clear();
        return;
    }
    truncate(prefix.source, prefix.items);
    for (int seq = 0; seq < static_cast<int>(contents_.size()); ++seq) {
        if (seq != prefix.source) {
            drop(seq);
        }
    }
    if (prefix.source != into) {
        share(into, prefix, items);
        drop(prefix.source);  // its cells stay: `into` holds them now
    }
}

void KvSequences::drop(int seq) {
    {
        const auto guard = lock();
        llama_memory_seq_rm(llama_get_memory(ctx_), seq_base_ + seq, -1, -1);
    }
    contents_[static_cast<size_t>(seq)].clear();
}

void KvSequences::clear() {
    if (ctx_mutex_ != nullptr) {
        for (int seq = 0; seq < static_cast<int>(contents_.size()); ++seq) {
            drop(seq);
        }
        return;
    }
    llama_memory_clear(llama_get_memory(ctx_), true);
    for (auto & c : contents_) {
        c.clear();
    }
}

}  // namespace ecso
