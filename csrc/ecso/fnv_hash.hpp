// FNV-1a, 64 bit: the content ids of images and the checksums of state files. Not a
// cryptographic hash: it tells content apart and finds damage, it does not resist forgery.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ecso {

struct Fnv1a64 {
    uint64_t value = 1469598103934665603ULL;
    void add(uint8_t byte) {
        value ^= byte;
        value *= 1099511628211ULL;
    }
    void add(const void * data, size_t n) {
        const auto * p = static_cast<const uint8_t *>(data);
        for (size_t i = 0; i < n; ++i) {
            add(p[i]);
        }
    }
};

}  // namespace ecso
