// Verdict rules: the paper's exact "yes"/"yes." match and a lenient prefix match.
#include "ecso/verdict.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "ecso/errors.hpp"
#include "ecso/model_impl.hpp"

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
        case VerdictRule::Logits:
            return t == "yes";  // the session writes "yes" or "no" from the probabilities
    }
    return false;
}

YesNoTokens YesNoTokens::find(const Model & model) {
    YesNoTokens found;
    const int32_t n_vocab = llama_vocab_n_tokens(model.impl().vocab());
    for (llama_token t = 0; t < n_vocab; ++t) {
        const std::string piece = lower_stripped(model.token_piece(t));
        if (piece == "yes") {
            found.yes.push_back(t);
        } else if (piece == "no") {
            found.no.push_back(t);
        }
    }
    if (found.yes.empty() || found.no.empty()) {
        throw ConfigError("verdict_rule 'logits' needs single tokens for \"yes\" and \"no\", and this vocabulary has none; "
                          "use verdict_rule 'exact'");
    }
    return found;
}

double yes_probability(const float * logits, const YesNoTokens & tokens,
                       const std::vector<std::pair<int32_t, float>> & logit_bias) {
    auto best = [&](const std::vector<llama_token> & ids) {
        double m = -INFINITY;
        for (llama_token t : ids) {
            double v = logits[t];
            for (const auto & [id, bias] : logit_bias) {
                if (id == t) {
                    v += bias;
                }
            }
            m = std::max(m, v);
        }
        return m;
    };
    return 1.0 / (1.0 + std::exp(best(tokens.no) - best(tokens.yes)));
}

}  // namespace ecso
