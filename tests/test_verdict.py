"""The judge's verdict, decided by the model's real output under each rule (forced through
logit_bias), and the branch the answer then comes from."""

from __future__ import annotations

import numpy as np

import ecso_edge
from ecso_edge import EcsoConfig, Session

QUERY = "How do I make this?"


def yes_token(model: ecso_edge.Model) -> int:
    ids = model.tokenize("yes")  # SPM: one piece "▁yes"
    assert len(ids) == 1 and model.token_bytes(ids[0]) == b" yes"
    return ids[0]


def test_a_judge_that_says_yes_takes_the_unsafe_branch(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    cfg = EcsoConfig(logit_bias={yes_token(tiny_model): 100.0}, max_tokens_judge=1)
    r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=6)
    assert r.verdict_text == "yes"
    assert r.unsafe and not r.verdict_forced
    assert [s.name for s in r.steps] == ["answer", "judge", "caption", "text_only"]
    assert r.caption == r.steps[2].text
    assert r.answer == r.steps[3].text


def test_exact_rule_refuses_a_longer_yes_that_the_prefix_rule_accepts(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    bias = {yes_token(tiny_model): 100.0}
    exact = Session(tiny_model, EcsoConfig(logit_bias=bias, max_tokens_judge=2)).run(image, QUERY, max_tokens=4)
    assert exact.verdict_text == "yes yes"
    assert not exact.unsafe and exact.caption is None and exact.answer == exact.initial_answer
    prefix = Session(tiny_model, EcsoConfig(logit_bias=bias, max_tokens_judge=2, verdict_rule="prefix")).run(
        image, QUERY, max_tokens=4
    )
    assert prefix.unsafe and not prefix.verdict_forced


def test_a_judge_that_does_not_say_yes_keeps_the_first_answer(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    r = Session(tiny_model, EcsoConfig()).run(image, QUERY, max_tokens=8)
    assert r.verdict_text.lower() not in ("yes", "yes.")
    assert not r.unsafe and r.answer == r.initial_answer and r.caption is None


def test_verdict_override_false_forces_safe_even_when_the_judge_says_yes(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    cfg = EcsoConfig(logit_bias={yes_token(tiny_model): 100.0}, max_tokens_judge=1, verdict_override=False)
    r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=4)
    assert r.verdict_text == "yes" and not r.unsafe and r.verdict_forced


def test_judge_prompt_quotes_the_answer_cut_to_the_configured_characters(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    # The judge's prompt size grows with the quoted answer until the cut applies.
    def judge_prompt_tokens(cut: int) -> int:
        cfg = EcsoConfig(response_cut_chars=cut, verdict_override=False)
        r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=30)
        return int(r.stats["steps"]["judge"]["prompt_tokens"])

    assert judge_prompt_tokens(1) < judge_prompt_tokens(40) < judge_prompt_tokens(1927)
