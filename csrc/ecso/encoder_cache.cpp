// The Model-wide encoder output cache (see encoder_cache.hpp).
#include "ecso/encoder_cache.hpp"

namespace ecso {

std::shared_ptr<const std::vector<float>> EncoderCache::find(const std::string & media_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_id_.find(media_id);
    if (it == by_id_.end()) {
        ++misses_;
        return nullptr;
    }
    ++hits_;
    order_.splice(order_.begin(), order_, it->second);
    return it->second->output;
}

void EncoderCache::put(const std::string & media_id, std::vector<float> output) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t size = output.size() * sizeof(float);
    if (size > limit_ || by_id_.count(media_id) != 0) {
        return;
    }
    order_.push_front({media_id, std::make_shared<const std::vector<float>>(std::move(output))});
    by_id_[media_id] = order_.begin();
    bytes_ += size;
    while (bytes_ > limit_) {
        const Entry & oldest = order_.back();
        bytes_ -= bytes_of(oldest);
        by_id_.erase(oldest.id);
        order_.pop_back();
        ++evictions_;
    }
}

void EncoderCache::touch(const std::string & media_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_id_.find(media_id);
    if (it != by_id_.end()) {
        order_.splice(order_.begin(), order_, it->second);
    }
}

EncoderCacheStats EncoderCache::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    EncoderCacheStats s;
    s.entries = static_cast<int32_t>(order_.size());
    s.bytes = bytes_;
    s.limit_bytes = limit_;
    s.hits = hits_;
    s.misses = misses_;
    s.evictions = evictions_;
    return s;
}

void EncoderCache::clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    order_.clear();
    by_id_.clear();
    bytes_ = 0;
}

}  // namespace ecso
