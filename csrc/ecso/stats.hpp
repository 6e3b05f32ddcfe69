// What a session reports about itself: its decoder's counts and its conversation cache's size.
// Public (through session.hpp) and free of llama.cpp types.
#pragma once

#include <cstdint>

namespace ecso {

// Counts of what the decoder did, so batching can be seen rather than assumed.
struct EngineStats {
    uint64_t requests = 0;        // requests started
    uint64_t decode_calls = 0;    // llama_decode calls (an image's embeddings count one per chunk)
    uint64_t batched_tokens = 0;  // tokens evaluated over all decode calls (image positions included)
    uint64_t rounds = 0;          // scheduler rounds (0 for a session with one lane)
    int32_t max_in_flight = 0;    // most requests running at once
    int32_t waiting = 0;          // calls waiting for a free slot now
    // Where a parallel session's rounds spend their time (0 with one lane): the lanes' solo work
    // (image encodes, sequence copies and restores, run alone), the merged decodes, and the gaps
    // between one round and the next while some active lane has not parked yet (its own CPU work:
    // sampling, detokenizing, building prompts, a caller's callback).
    double solo_seconds = 0;
    double decode_seconds = 0;
    double gap_seconds = 0;
};

// What a conversation cache keeps between chat calls.
struct CacheStats {
    int32_t conversations = 0;     // saved answer sequences
    uint64_t state_bytes = 0;      // their KV cells
    int32_t images = 0;            // images whose encoder output is kept
    uint64_t embedding_bytes = 0;  // that output
    int32_t captions = 0;
    uint64_t hits = 0;       // chat calls that restored a saved sequence
    uint64_t shared_hits = 0;  // of those, from another slot's or session's (sequence_store.hpp)
    uint64_t misses = 0;     // chat calls that found none to continue
    uint64_t evictions = 0;  // saved sequences and images dropped to keep the bounds

    CacheStats & operator+=(const CacheStats & o) {
        conversations += o.conversations;
        state_bytes += o.state_bytes;
        images += o.images;
        embedding_bytes += o.embedding_bytes;
        captions += o.captions;
        hits += o.hits;
        shared_hits += o.shared_hits;
        misses += o.misses;
        evictions += o.evictions;
        return *this;
    }
};

}  // namespace ecso
