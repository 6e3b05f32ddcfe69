// What the conversation plan keeps between chat calls, within the bounds the config sets: the KV
// cells of each conversation's last answer sequence (prompt and answer, saved to host memory with
// llama_state_seq_get_data, as llama-server's prompt cache does), the encoder output of their
// images (the engine's embedding map, whose size this bounds), and the captions already made.
//
// The saved sequences are published to the Model's sequence store (sequence_store.hpp): a call
// continues the best match among this cache's own entries and every other slot's and session's
// on the Model. Only the owner's entries count in its bounds and are replaced by its next turn.
//
// Why a host copy and not the cells in place: the judge and the captions of a turn start from
// the answer's prefix, and the cache lays their cells out exactly as an empty cache would only
// once the answer's own cells are freed. A restore into an emptied cache puts the saved cells
// back at the cells a fresh evaluation fills, so a reused turn stays bit-identical.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ecso/kv_sequences.hpp"
#include "ecso/prompt.hpp"
#include "ecso/sequence_store.hpp"
#include "ecso/stats.hpp"
#include "llama.h"

namespace ecso {

class DecodingEngine;

class ConversationCache {
public:
    using Stats = CacheStats;
    using Embeddings = std::map<std::string, std::vector<float>>;  // the engine's, by media id

    void set_limits(int32_t max_conversations, uint64_t max_mib);  // the byte bound in MiB
    // Publishes this cache's entries to `store` and continues the entries of the others there;
    // `generated_cells`: the owner keeps answer cells decoded one token at a time.
    void share(SequenceStore & store, bool generated_cells);

    // Empties the cache and restores into `seq` the saved sequence sharing the most whole parts
    // with `prompt` (this cache's own on a tie). Returns the items restored (0: nothing matches).
    size_t restore_best(DecodingEngine & engine, int seq, const Prompt & prompt);

    // Saves what `seq` holds (a conversation's prompt and answer); `turn_end`: the item where the
    // prompt's last message ends. The entry restored for this call is replaced when the call
    // shared all of its messages (it is the same conversation, a turn earlier), and so is any
    // entry the new one extends; a conversation keeps one entry. Not saved when it is over the
    // byte bound, or when a sliding-window layer has already dropped cells a shorter prefix
    // would need.
    void save(DecodingEngine & engine, int seq, size_t turn_end);

    // The caption of image `image_id` for `query`, when one was made.
    std::optional<std::string> caption(const std::string & image_id, const std::string & query) const;
    void remember_caption(const std::string & image_id, const std::string & query, const std::string & caption);

    // Marks the images (content ids) the current call uses as the most recently used.
    void touch_images(const std::vector<std::string> & image_ids);

    // Evicts the least recently used saved sequences and image encodings until both bounds hold.
    void trim(Embeddings & embeddings);

    Stats stats(const Embeddings & embeddings) const;
    void clear(Embeddings & embeddings);

    struct Saved : SavedSequence {
        uint64_t used = 0;
    };
    // Everything the cache keeps, for a state file (session_state_file.hpp): the saved sequences
    // (most recently saved first), the images' last uses, the captions (oldest first) and the
    // engine's encoder outputs.
    struct Snapshot {
        std::vector<Saved> saved;
        std::vector<std::pair<std::string, uint64_t>> image_used;
        std::vector<std::pair<std::pair<std::string, std::string>, std::string>> captions;
        Embeddings embeddings;
        uint64_t tick = 0;
    };
    Snapshot snapshot(const Embeddings & embeddings) const;
    // Replaces what the cache and `embeddings` hold with `from`, then trims to the limits.
    void replace(Snapshot from, Embeddings & embeddings);

private:
    struct Entry {
        std::shared_ptr<const SavedSequence> sequence;  // immutable once published
        uint64_t used = 0;
    };
    static std::string image_of(const std::string & media_id);
    void keep(SavedSequence sequence, uint64_t used, bool front);
    void evict(std::list<Entry>::iterator entry);

    std::list<Entry> saved_;
    std::list<Entry>::iterator continued_ = saved_.end();  // restored for this call, and continued
    SequenceStore * store_ = nullptr;
    bool generated_cells_ = false;
    std::map<std::string, uint64_t> image_used_;  // image id -> tick of its last use
    std::map<std::pair<std::string, std::string>, std::string> captions_;
    std::list<std::pair<std::string, std::string>> caption_order_;  // oldest first
    int32_t max_conversations_ = 0;
    uint64_t max_mib_ = 0;
    uint64_t tick_ = 0;
    uint64_t hits_ = 0;       // restores that found a saved sequence
    uint64_t shared_hits_ = 0;  // of those, another slot's or session's
    uint64_t misses_ = 0;     // restores that found none
    uint64_t evictions_ = 0;  // saved sequences and images dropped for the bounds
};

}  // namespace ecso
