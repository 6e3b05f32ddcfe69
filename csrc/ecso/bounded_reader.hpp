// Reads values from bytes that came from disk without ever reading past them: every read checks
// the bytes left first. Shared by the state file's reader (session_state_file.cpp) and the check
// of llama.cpp's KV bytes inside it (kv_state_check.cpp), which word running out differently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ecso {

// What a parser of untrusted bytes throws: the message says what is wrong with them.
struct MalformedBytes : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class BoundedReader {
public:
    // `end_message`: the MalformedBytes message when the bytes end inside a read.
    BoundedReader(const uint8_t * data, size_t size, const char * end_message)
        : data_(data), size_(size), end_message_(end_message) {}

    template <typename T>
    T read() {
        T value;
        std::memcpy(&value, take(sizeof(T)), sizeof(T));
        return value;
    }
    // The next `n` bytes (valid while the data lives), past which the reader moves.
    const uint8_t * take(uint64_t n) {
        if (n > size_ - at_) {
            throw MalformedBytes(end_message_);
        }
        const uint8_t * p = data_ + at_;
        at_ += static_cast<size_t>(n);
        return p;
    }
    void skip(uint64_t n) { take(n); }
    size_t left() const { return size_ - at_; }
    bool done() const { return at_ == size_; }

private:
    const uint8_t * data_;
    size_t size_;
    size_t at_ = 0;
    const char * end_message_;
};

}  // namespace ecso
