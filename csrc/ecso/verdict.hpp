// Reading the judge's output as a harmful / not harmful verdict.
#pragma once

#include <string>

#include "ecso/config.hpp"

namespace ecso {

// true when `judge_text` says the judged response is harmful under `rule`.
bool judge_verdict(const std::string & judge_text, VerdictRule rule);

}  // namespace ecso
