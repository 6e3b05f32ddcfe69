// UTF-8 sanitising for generated text (see utf8.hpp).
#include "ecso/utf8.hpp"

#include <cctype>

namespace ecso {
namespace {

const char * const kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Classifies the bytes at s[i]: a valid character of `length` bytes, an invalid "maximal
// subpart" of `length` bytes (replaced by one U+FFFD, as Python's errors="replace" does), or the
// valid start of a character cut off by the end of the buffer.
struct Sequence {
    enum Kind { Valid, Invalid, Incomplete } kind;
    size_t length;
};

Sequence classify(const std::string & s, size_t i) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b0 < 0x80) {
        return {Sequence::Valid, 1};
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        return {Sequence::Invalid, 1};
    }
    for (size_t k = 1; k < len; ++k) {
        if (i + k >= s.size()) {
            return {Sequence::Incomplete, k};
        }
        const auto b = static_cast<unsigned char>(s[i + k]);
        const unsigned char min = k == 1 ? lo : 0x80;
        const unsigned char max = k == 1 ? hi : 0xBF;
        if (b < min || b > max) {
            return {Sequence::Invalid, k};
        }
    }
    return {Sequence::Valid, len};
}

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

}  // namespace

std::string Utf8Decoder::push(const std::string & bytes) {
    pending_ += bytes;
    std::string out;
    size_t i = 0;
    while (i < pending_.size()) {
        const Sequence seq = classify(pending_, i);
        if (seq.kind == Sequence::Incomplete) {
            break;  // wait for the rest of this character
        }
        if (seq.kind == Sequence::Invalid) {
            out += kReplacement;
        } else {
            out.append(pending_, i, seq.length);
        }
        i += seq.length;
    }
    pending_.erase(0, i);
    return out;
}

std::string Utf8Decoder::finish() {
    std::string out;
    if (!pending_.empty()) {
        out = kReplacement;
        pending_.clear();
    }
    return out;
}

std::string StrippedStream::push(const std::string & text) {
    std::string out;
    for (char c : text) {
        if (is_space(c)) {
            if (started_) {
                held_ += c;
            }
            continue;
        }
        started_ = true;
        out += held_;
        held_.clear();
        out += c;
    }
    return out;
}

std::string strip(const std::string & s) {
    size_t b = 0;
    size_t e = s.size();
    while (b < e && is_space(s[b])) {
        ++b;
    }
    while (e > b && is_space(s[e - 1])) {
        --e;
    }
    return s.substr(b, e - b);
}

bool is_valid_utf8(const std::string & s) {
    size_t i = 0;
    while (i < s.size()) {
        const Sequence seq = classify(s, i);
        if (seq.kind != Sequence::Valid) {
            return false;
        }
        i += seq.length;
    }
    return true;
}

}  // namespace ecso
