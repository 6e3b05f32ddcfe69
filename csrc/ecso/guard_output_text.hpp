// Text helpers the guard formats' parsers share (guard_formats.cpp): trimming, lines, the first
// word, a leading think block. ASCII only, as the guards' verdict words are.
#pragma once

#include <string>
#include <vector>

namespace ecso::guard_text {

std::string trim(const std::string & s);
bool starts_with(const std::string & s, const std::string & prefix);
std::string lower(std::string s);
// The non-empty lines of `s`, each trimmed: the cards' examples put the lines of a verdict one
// newline apart, models sometimes add blank lines or trailing spaces.
std::vector<std::string> lines_of(const std::string & s);
std::vector<std::string> split_commas(const std::string & s);
// The leading run of ASCII letters of `s` after whitespace ("Yes" of "Yes.", "" of "1 yes").
std::string first_word(const std::string & s);
// Drops a leading <think>...</think> block; `empty_only`: only one with nothing but whitespace in it.
std::string drop_think(const std::string & s, bool empty_only);

}  // namespace ecso::guard_text
