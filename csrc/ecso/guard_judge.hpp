// Step 2 on a guard model: a text-only model (TextModel) reads the query and the answer in its
// own prompt format (guard_formats.hpp) and its own chat template, in a context of its own. The
// format's fixed instruction (its head) stays in the KV cache between calls; everything after it
// is evaluated again, in the batches a fresh context would use, so reuse changes no token.
//
// Thread safety: judge() may be called from any thread; calls on one GuardJudge are serialised.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ecso/call_options.hpp"
#include "ecso/guard_formats.hpp"
#include "ecso/result.hpp"
#include "ecso/text_model.hpp"

namespace ecso {

struct GuardOutcome {
    GuardVerdict verdict;  // the format's reading of the guard's output
    StepRecord record;     // the step as the session reports it: named "judge"
    std::string judge_model;  // the guard's file name
};

// How a plan runs step 2 on a guard model. The session makes one per call: it knows the call's
// token and progress sink, and takes a parallel lane out of the decode rounds meanwhile.
using GuardStep = std::function<GuardOutcome(const std::string & query, const std::string & response)>;

// Writes a guard's step 2 into `result`: the step, its text, its verdict. An output the format
// cannot read counts as unsafe (the eyes-closed answer is the safe side), and says so in
// result.judge_parsed. verdict_forced and unsafe are the caller's, as for the self-judge.
void record_guard_step(EcsoResult & result, GuardOutcome outcome);

class GuardJudge {
public:
    // Throws ConfigError for an unknown format or a model whose chat template llama.cpp cannot
    // apply, and ResourceError when its context cannot be created.
    GuardJudge(std::shared_ptr<const TextModel> model, const std::string & format);
    ~GuardJudge();
    GuardJudge(const GuardJudge &) = delete;
    GuardJudge & operator=(const GuardJudge &) = delete;

    // Throws ContextOverflowError when the prompt and the verdict's tokens exceed the guard's
    // n_ctx, CancelledError when `cancel` fires.
    GuardOutcome judge(const std::string & query, const std::string & response, const CancelToken * cancel,
                       const ProgressSink * progress);

    const TextModel & model() const;
    const GuardFormat & format() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace ecso
