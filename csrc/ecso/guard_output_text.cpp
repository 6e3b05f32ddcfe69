// The guard parsers' text helpers (see guard_output_text.hpp).
#include "ecso/guard_output_text.hpp"

#include <algorithm>
#include <cctype>

namespace ecso::guard_text {
namespace {

const char * const kSpace = " \t\n\r\f\v";

}  // namespace

std::string trim(const std::string & s) {
    const size_t b = s.find_first_not_of(kSpace);
    if (b == std::string::npos) {
        return "";
    }
    return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

bool starts_with(const std::string & s, const std::string & prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// The non-empty lines of `s`, each trimmed: the cards' examples put the lines of a verdict one
// newline apart, models sometimes add blank lines or trailing spaces.
std::vector<std::string> lines_of(const std::string & s) {
    std::vector<std::string> out;
    size_t at = 0;
    while (at <= s.size()) {
        size_t end = s.find('\n', at);
        if (end == std::string::npos) {
            end = s.size();
        }
        std::string line = trim(s.substr(at, end - at));
        if (!line.empty()) {
            out.push_back(line);
        }
        at = end + 1;
    }
    return out;
}

std::vector<std::string> split_commas(const std::string & s) {
    std::vector<std::string> out;
    size_t at = 0;
    while (true) {
        const size_t comma = s.find(',', at);
        out.push_back(trim(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at)));
        if (comma == std::string::npos) {
            return out;
        }
        at = comma + 1;
    }
}

// The leading run of ASCII letters of `s` after whitespace ("Yes" of "Yes.", "" of "1 yes").
std::string first_word(const std::string & s) {
    const std::string t = trim(s);
    size_t n = 0;
    while (n < t.size() && std::isalpha(static_cast<unsigned char>(t[n]))) {
        ++n;
    }
    return t.substr(0, n);
}

// Drops a leading <think>...</think> block; `empty_only`: only one with nothing but whitespace in it.
std::string drop_think(const std::string & s, bool empty_only) {
    const std::string t = trim(s);
    if (!starts_with(t, "<think>")) {
        return t;
    }
    const size_t close = t.find("</think>");
    if (close == std::string::npos) {
        return t;
    }
    if (empty_only && !trim(t.substr(7, close - 7)).empty()) {
        return t;
    }
    return trim(t.substr(close + 8));
}

}  // namespace ecso::guard_text
