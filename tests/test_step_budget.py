"""Step budgets: a run whose first step fits returns an answer. Every step's generation is capped
by the room its context has left (stop reason 'length'), the judge quotes no more of the answer
than fits, and a request whose later steps could not fit at all is refused before step 1, with
nothing evaluated. Reuse stays bit-identical to the reference path under every cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import ContextOverflowError, EcsoConfig, Session

N_CTX = 512


@pytest.fixture(scope="module")
def small_model(tiny_paths: tuple[Path, Path]) -> ecso_edge.Model:
    return ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=N_CTX)


def fits(step: ecso_edge.StepRecord) -> bool:
    # the last generated token needs no KV cell of its own
    return step.stats["prompt_tokens"] + len(step.tokens) - 1 <= N_CTX


@pytest.mark.parametrize("shadow", [False, True])
def test_a_huge_token_limit_on_the_unsafe_branch_returns_an_answer(small_model: ecso_edge.Model,
                                                                   image: np.ndarray, shadow: bool) -> None:
    # used to do all the work and fail at step 4: ContextOverflowError in 'text_only'
    config = EcsoConfig(verdict_override=True, ignore_eos=True, shadow_judge=shadow)
    r = Session(small_model, config).run(image, "Describe the picture.", max_tokens=1_000_000)
    assert [s.name for s in r.steps] == ["answer", "judge", "caption", "text_only"]
    assert all(fits(s) for s in r.steps), [(s.name, s.stats["prompt_tokens"], len(s.tokens)) for s in r.steps]
    assert r.steps[0].stop_reason in ("context", "length")
    assert r.steps[2].stop_reason == "length" and r.steps[3].stop_reason == "length"
    # the caption and the final answer share step 4's room: both got a real share of it
    assert len(r.steps[2].tokens) > 100 and len(r.steps[3].tokens) > 100
    assert r.answer == r.steps[3].text and r.answer


def test_capped_steps_are_bit_identical_with_and_without_reuse(small_model: ecso_edge.Model,
                                                               image: np.ndarray) -> None:
    runs = [Session(small_model, EcsoConfig(verdict_override=True, ignore_eos=True, reuse_kv=reuse))
            .run(image, "Describe the picture.", max_tokens=100_000) for reuse in (True, False)]
    assert [s.tokens for s in runs[0].steps] == [s.tokens for s in runs[1].steps]
    assert [s.input_tokens for s in runs[0].steps] == [s.input_tokens for s in runs[1].steps]


def test_the_judge_quotes_only_what_fits(small_model: ecso_edge.Model, image: np.ndarray) -> None:
    # step 1 fills the context: the judge cannot quote 1927 characters of it, and quotes a prefix
    config = EcsoConfig(ignore_eos=True, max_tokens_judge=4, verdict_override=False)
    r = Session(small_model, config).run(image, "Describe the picture.", max_tokens=100_000)
    judge = r.steps[1]
    assert judge.stats["prompt_tokens"] + 4 <= N_CTX and len(judge.tokens) == 4
    judge_text = b"".join(small_model.token_bytes(t) for t in judge.input_tokens if t >= 0).decode(errors="replace")
    assert len(r.initial_answer) > 1927 or r.initial_answer not in judge_text  # the full quote did not fit
    assert r.initial_answer[:40] in judge_text  # a prefix of it is quoted


def test_judge_alone_on_a_long_response_quotes_what_fits(small_model: ecso_edge.Model, image: np.ndarray) -> None:
    r = Session(small_model, EcsoConfig(response_cut_chars=100_000)).judge(image, "q", "word " * 5000)
    assert r.steps[0].stats["prompt_tokens"] < N_CTX


def test_a_request_whose_judge_cannot_fit_is_refused_before_step_1(small_model: ecso_edge.Model,
                                                                   image: np.ndarray) -> None:
    config = EcsoConfig(judge_template="Consider this. " * 200 + "{response} Harmful?")
    events: list[tuple[str, str]] = []
    with pytest.raises(ContextOverflowError, match=rf"cannot finish in a context of {N_CTX} tokens: "
                                                   r"step 'judge' alone needs \d+ .*so nothing was run"):
        Session(small_model, config).run(image, "What is this?", max_tokens=8,
                                         on_progress=lambda step, phase, *_: events.append((step, phase)))
    assert events == []  # not even step 1's prompt was evaluated
    # answer() runs step 1 only, so it is not refused, and the judge's template does not change it
    r = Session(small_model, config).answer(image, "What is this?", max_tokens=2)
    plain = Session(small_model).answer(image, "What is this?", max_tokens=2)
    assert r.steps[0].tokens == plain.steps[0].tokens and len(r.steps[0].tokens) == 2
    assert r.answer == plain.answer and r.steps[0].stop_reason == "length"


def test_a_request_whose_eyes_closed_step_cannot_fit_is_refused_unless_forced_safe(
    small_model: ecso_edge.Model, image: np.ndarray
) -> None:
    long_hint = "You are given some hints. " * 120 + "{caption} {query}"
    with pytest.raises(ContextOverflowError, match="step 'text_only' alone needs"):
        Session(small_model, EcsoConfig(text_only_template=long_hint)).run(image, "What is this?", max_tokens=4)
    # forced safe: steps 3-4 never run, so their room is not needed
    r = Session(small_model, EcsoConfig(text_only_template=long_hint, verdict_override=False)).run(
        image, "What is this?", max_tokens=4)
    assert len(r.steps) == 2


def test_shadow_judging_runs_where_both_sequences_fit_and_steps_aside_where_not(
    small_model: ecso_edge.Model, image: np.ndarray
) -> None:
    config = EcsoConfig(verdict_override=True, ignore_eos=True, shadow_judge=True)
    fitting = Session(small_model, config).run(image, "Describe the picture.", max_tokens=150)
    assert fitting.steps[1].stats["tokens_shadowed"] > 0 and all(fits(s) for s in fitting.steps)
    crowded = Session(small_model, config).run(image, "Describe the picture.", max_tokens=400)
    assert crowded.steps[1].stats["tokens_shadowed"] == 0 and all(fits(s) for s in crowded.steps)
