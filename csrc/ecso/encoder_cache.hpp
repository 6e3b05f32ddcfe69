// The encoder outputs a Model keeps for every session on it, so an image already seen in one
// conversation is not encoded again in another conversation or another Session: keyed by the
// image chunk's media id (its decoded pixels' content hash and chunk ordinal; a Model has one
// projector, so the pair names the output), least recently used first out, within a byte bound.
//
// Reuse is exact: the projector and its threads are the Model's, so an output computed once is
// the output every session would compute. Thread-safe: sessions on one Model share it.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ecso {

struct EncoderCacheStats {
    int32_t entries = 0;
    uint64_t bytes = 0;
    uint64_t limit_bytes = 0;
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t evictions = 0;
};

class EncoderCache {
public:
    explicit EncoderCache(uint64_t limit_bytes = 0) : limit_(limit_bytes) {}

    // The output for `media_id`, or null (counted as a miss). A hit becomes the most recent.
    std::shared_ptr<const std::vector<float>> find(const std::string & media_id);
    // Keeps `output` (dropping the least recently used until the bound holds; an output larger
    // than the bound is not kept).
    void put(const std::string & media_id, std::vector<float> output);
    // Marks `media_id` as just used (a session served it from its own copy), so an image in use
    // is not the first out.
    void touch(const std::string & media_id);
    EncoderCacheStats stats() const;
    void clear();

private:
    struct Entry {
        std::string id;
        std::shared_ptr<const std::vector<float>> output;
    };
    static uint64_t bytes_of(const Entry & e) { return e.output->size() * sizeof(float); }

    mutable std::mutex mutex_;
    std::list<Entry> order_;  // most recently used first
    std::map<std::string, std::list<Entry>::iterator> by_id_;
    uint64_t limit_;
    uint64_t bytes_ = 0;
    uint64_t hits_ = 0;
    uint64_t misses_ = 0;
    uint64_t evictions_ = 0;
};

}  // namespace ecso
