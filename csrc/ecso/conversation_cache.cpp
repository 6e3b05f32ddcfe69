// Saved answer sequences, image encodings and captions between chat calls (see
// conversation_cache.hpp).
#include "ecso/conversation_cache.hpp"

#include <algorithm>

#include "ecso/decoding_engine.hpp"
#include "ecso/model_impl.hpp"

namespace ecso {
namespace {

// Captions are short texts; this many bound their memory without a byte count.
constexpr size_t kMaxCaptions = 1024;

uint64_t embedding_bytes(const std::vector<float> & e) { return e.size() * sizeof(float); }

}  // namespace

std::string ConversationCache::image_of(const std::string & media_id) { return media_id.substr(0, media_id.find('#')); }

void ConversationCache::set_limits(int32_t max_conversations, uint64_t max_mib) {
    max_conversations_ = max_conversations;
    max_mib_ = max_mib;
}

void ConversationCache::share(SequenceStore & store, bool generated_cells) {
    store_ = &store;
    generated_cells_ = generated_cells;
}

size_t ConversationCache::restore_best(DecodingEngine & engine, int seq, const Prompt & prompt) {
    KvSequences & kv = engine.kv();
    kv.clear();
    continued_ = saved_.end();
    const auto & items = prompt.items();
    auto shared_with = [&](const SavedSequence & entry) {
        size_t n = 0;
        while (n < entry.items.size() && n < items.size() && entry.items[n].same_as(items[n])) {
            ++n;
        }
        return prompt.reuse_boundary(n);
    };
    auto best = saved_.end();
    size_t best_shared = 0;
    for (auto it = saved_.begin(); it != saved_.end(); ++it) {
        const size_t shared = shared_with(*it->sequence);
        if (shared > best_shared) {
            best = it;
            best_shared = shared;
        }
    }
    std::shared_ptr<const SavedSequence> other;
    if (store_ != nullptr) {
        for (auto & entry : store_->others(this, generated_cells_)) {
            const size_t shared = shared_with(*entry);
            if (shared > best_shared) {
                other = std::move(entry);
                best_shared = shared;
            }
        }
    }
    const SavedSequence * chosen = other ? other.get() : best != saved_.end() ? best->sequence.get() : nullptr;
    if (chosen == nullptr) {
        ++misses_;
        return 0;
    }
    // Another context's entry may not fit this one (a smaller n_ctx): llama.cpp then refuses it.
    const size_t read = engine.restore_sequence(seq, chosen->state);
    if (read == 0) {
        kv.clear();  // a failed restore leaves nothing to trust
        ++misses_;
        return 0;
    }
    ++hits_;
    kv.adopt(seq, chosen->items);
    if (other) {
        ++shared_hits_;  // the owner keeps its entry; this call's answer gets one of this cache's
    } else {
        best->used = ++tick_;
        if (best_shared >= best->sequence->turn_end) {
            continued_ = best;
        }
    }
    return chosen->items.size();
}

void ConversationCache::save(DecodingEngine & engine, int seq, size_t turn_end) {
    const KvSequences & kv = engine.kv();
    if (continued_ != saved_.end()) {
        saved_.erase(continued_);  // this call is its next turn: the new entry (or none) replaces it
        continued_ = saved_.end();
    }
    if (max_conversations_ == 0) {
        return;
    }
    const std::vector<PromptItem> & items = kv.held(seq);
    if (items.empty()) {
        return;
    }
    // A window cache saves only the cells inside the window of the sequence's last position; a
    // later turn that shares less than all of it would find the cells it needs missing.
    const int32_t n_swa = llama_model_n_swa(engine.model().impl().llama());
    if (n_swa > 0 && engine.seq_pos_max(seq) >= n_swa) {
        return;
    }
    SavedSequence entry;
    entry.state = engine.save_sequence(seq);
    if (entry.state.empty() || entry.state.size() > (max_mib_ << 20)) {
        return;
    }
    entry.items = items;
    entry.turn_end = turn_end;
    // The entries this one extends are the same conversation at an earlier turn.
    saved_.remove_if([&](const Entry & old) {
        const auto & held = old.sequence->items;
        return held.size() <= entry.items.size() &&
               std::equal(held.begin(), held.end(), entry.items.begin(),
                          [](const PromptItem & a, const PromptItem & b) { return a.same_as(b); });
    });
    keep(std::move(entry), ++tick_, true);
}

void ConversationCache::keep(SavedSequence sequence, uint64_t used, bool front) {
    auto shared = std::make_shared<const SavedSequence>(std::move(sequence));
    if (store_ != nullptr) {
        store_->publish(shared, this, generated_cells_);
    }
    Entry entry{std::move(shared), used};
    if (front) {
        saved_.push_front(std::move(entry));
    } else {
        saved_.push_back(std::move(entry));
    }
}

std::optional<std::string> ConversationCache::caption(const std::string & image_id, const std::string & query) const {
    const auto it = captions_.find({image_id, query});
    if (it == captions_.end()) {
        return std::nullopt;
    }
    return it->second;
}

void ConversationCache::remember_caption(const std::string & image_id, const std::string & query,
                                         const std::string & caption) {
    const auto key = std::make_pair(image_id, query);
    if (captions_.insert_or_assign(key, caption).second) {
        caption_order_.push_back(key);
    }
    while (captions_.size() > kMaxCaptions) {
        captions_.erase(caption_order_.front());
        caption_order_.pop_front();
    }
}

void ConversationCache::touch_images(const std::vector<std::string> & image_ids) {
    ++tick_;
    for (const auto & id : image_ids) {
        image_used_[id] = tick_;
    }
}

void ConversationCache::trim(Embeddings & embeddings) {
    while (saved_.size() > static_cast<size_t>(max_conversations_)) {
        auto oldest = std::min_element(saved_.begin(), saved_.end(),
                                       [](const Entry & a, const Entry & b) { return a.used < b.used; });
        evict(oldest);
    }
    const uint64_t limit = max_mib_ << 20;
    for (;;) {
        const Stats now = stats(embeddings);
        if (now.state_bytes + now.embedding_bytes <= limit) {
            break;
        }
        // The least recently used of: a saved sequence, an image's encodings.
        auto oldest_saved = std::min_element(saved_.begin(), saved_.end(),
                                             [](const Entry & a, const Entry & b) { return a.used < b.used; });
        std::string oldest_image;
        uint64_t image_tick = UINT64_MAX;
        for (const auto & [media_id, embd] : embeddings) {
            const std::string image = image_of(media_id);
            const auto used = image_used_.find(image);
            const uint64_t tick = used == image_used_.end() ? 0 : used->second;
            if (tick < image_tick) {
                image_tick = tick;
                oldest_image = image;
            }
        }
        if (oldest_saved != saved_.end() && (image_tick == UINT64_MAX || oldest_saved->used <= image_tick)) {
            evict(oldest_saved);
        } else if (image_tick != UINT64_MAX) {
            for (auto it = embeddings.begin(); it != embeddings.end();) {
                it = image_of(it->first) == oldest_image ? embeddings.erase(it) : std::next(it);
            }
            image_used_.erase(oldest_image);
            ++evictions_;
        } else {
            break;
        }
    }
}

ConversationCache::Stats ConversationCache::stats(const Embeddings & embeddings) const {
    Stats s;
    s.conversations = static_cast<int32_t>(saved_.size());
    for (const Entry & entry : saved_) {
        s.state_bytes += entry.sequence->state.size();
    }
    std::string last;
    for (const auto & [media_id, embd] : embeddings) {
        s.embedding_bytes += embedding_bytes(embd);
        const std::string image = image_of(media_id);
        if (image != last) {
            s.images += 1;
            last = image;
        }
    }
    s.captions = static_cast<int32_t>(captions_.size());
    s.hits = hits_;
    s.shared_hits = shared_hits_;
    s.misses = misses_;
    s.evictions = evictions_;
    return s;
}

void ConversationCache::evict(std::list<Entry>::iterator entry) {
    if (entry == continued_) {
        continued_ = saved_.end();
    }
    saved_.erase(entry);
    ++evictions_;
}

ConversationCache::Snapshot ConversationCache::snapshot(const Embeddings & embeddings) const {
    Snapshot out;
    for (const Entry & entry : saved_) {
        Saved copy;
        static_cast<SavedSequence &>(copy) = *entry.sequence;
        copy.used = entry.used;
        for (PromptItem & item : copy.items) {
            item.media = nullptr;
        }
        out.saved.push_back(std::move(copy));
    }
    out.image_used.assign(image_used_.begin(), image_used_.end());
    for (const auto & key : caption_order_) {
        out.captions.emplace_back(key, captions_.at(key));
    }
    out.embeddings = embeddings;
    out.tick = tick_;
    return out;
}

void ConversationCache::replace(Snapshot from, Embeddings & embeddings) {
    saved_.clear();
    continued_ = saved_.end();
    for (Saved & entry : from.saved) {
        const uint64_t used = entry.used;
        keep(std::move(static_cast<SavedSequence &>(entry)), used, false);
    }
    image_used_.clear();
    for (const auto & [id, tick] : from.image_used) {
        image_used_[id] = tick;
    }
    captions_.clear();
    caption_order_.clear();
    for (auto & [key, caption] : from.captions) {
        remember_caption(key.first, key.second, caption);
    }
    embeddings = std::move(from.embeddings);
    tick_ = from.tick;
    trim(embeddings);
}

void ConversationCache::clear(Embeddings & embeddings) {
    saved_.clear();
    continued_ = saved_.end();
    image_used_.clear();
    captions_.clear();
    caption_order_.clear();
    embeddings.clear();
}

}  // namespace ecso
