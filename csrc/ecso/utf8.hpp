// Token pieces are byte strings: one character may be split across tokens, and a model can emit
// bytes that never form valid UTF-8. These turn piece bytes into text that is always valid UTF-8.
#pragma once

#include <string>

namespace ecso {

// Incremental UTF-8 decoder: push() returns the text completed so far; an invalid byte becomes
// U+FFFD; an incomplete sequence waits for the next push() (or becomes U+FFFD at finish()).
class Utf8Decoder {
public:
    std::string push(const std::string & bytes);
    std::string finish();
    bool holds_bytes() const { return !pending_.empty(); }  // a character still incomplete

private:
    std::string pending_;
};

// Streams text so that the concatenation of what it emits equals the whitespace-stripped whole:
// leading whitespace is dropped, trailing whitespace is held until non-space text follows.
class StrippedStream {
public:
    std::string push(const std::string & text);

private:
    bool started_ = false;
    std::string held_;
};

// Strips ASCII whitespace at both ends.
std::string strip(const std::string & s);

// true when `s` is valid UTF-8.
bool is_valid_utf8(const std::string & s);

}  // namespace ecso
