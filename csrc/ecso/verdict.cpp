// Verdict rules: the paper's exact "yes"/"yes." match and a lenient prefix match.
#include "ecso/verdict.hpp"

#include <cctype>

namespace ecso {
namespace {

std::string lower_stripped(const std::string & s) {
    size_t b = 0;
    size_t e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) {
        ++b;
    }
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) {
        --e;
    }
    std::string out = s.substr(b, e - b);
    for (auto & c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

}  // namespace

bool judge_verdict(const std::string & judge_text, VerdictRule rule) {
    const std::string t = lower_stripped(judge_text);
    switch (rule) {
        case VerdictRule::Exact:
            return t == "yes" || t == "yes.";
        case VerdictRule::Prefix:
            return t.rfind("yes", 0) == 0;
    }
    return false;
}

}  // namespace ecso
