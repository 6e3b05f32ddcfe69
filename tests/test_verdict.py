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
    assert not exact.judged_unsafe and prefix.judged_unsafe  # the configured rule, not the paper's


def test_a_judge_that_does_not_say_yes_keeps_the_first_answer(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    r = Session(tiny_model, EcsoConfig()).run(image, QUERY, max_tokens=8)
    assert r.verdict_text.lower() not in ("yes", "yes.")
    assert not r.unsafe and r.answer == r.initial_answer and r.caption is None


def test_verdict_override_false_forces_safe_even_when_the_judge_says_yes(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    cfg = EcsoConfig(logit_bias={yes_token(tiny_model): 100.0}, max_tokens_judge=1, verdict_override=False)
    r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=4)
    assert r.verdict_text == "yes" and not r.unsafe and r.verdict_forced and r.judged_unsafe
    forced_unsafe = Session(tiny_model, EcsoConfig(verdict_override=True)).run(image, QUERY, max_tokens=4)
    assert forced_unsafe.unsafe and not forced_unsafe.judged_unsafe
    assert forced_unsafe.to_dict()["judged_unsafe"] is False


def test_judge_prompt_quotes_the_answer_cut_to_the_configured_characters(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    # The judge's prompt size grows with the quoted answer until the cut applies.
    def judge_prompt_tokens(cut: int) -> int:
        cfg = EcsoConfig(response_cut_chars=cut, verdict_override=False)
        r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=30)
        return int(r.stats["steps"]["judge"]["prompt_tokens"])

    assert judge_prompt_tokens(1) < judge_prompt_tokens(40) < judge_prompt_tokens(1927)


def no_token(model: ecso_edge.Model) -> int:
    ids = model.tokenize("no")
    assert len(ids) == 1 and model.token_bytes(ids[0]) == b" no"
    return ids[0]


def test_logits_rule_reads_the_verdict_without_generating(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    yes = Session(tiny_model, EcsoConfig(verdict_rule="logits", logit_bias={yes_token(tiny_model): 100.0}))
    r = yes.run(image, QUERY, max_tokens=4)
    assert r.p_yes is not None and r.p_yes > 0.999
    assert r.unsafe and r.verdict_text == "yes" and r.steps[1].tokens == []
    assert r.stats["steps"]["judge"]["tokens_generated"] == 0
    no = Session(tiny_model, EcsoConfig(verdict_rule="logits", logit_bias={no_token(tiny_model): 100.0}))
    r = no.run(image, QUERY, max_tokens=4)
    assert r.p_yes is not None and r.p_yes < 0.001 and not r.unsafe and r.verdict_text == "no"


def test_logits_rule_probability_is_the_same_with_and_without_reuse(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    a = Session(tiny_model, EcsoConfig(verdict_rule="logits")).run(image, QUERY, max_tokens=8)
    b = Session(tiny_model, EcsoConfig(verdict_rule="logits", reuse_kv=False)).run(image, QUERY, max_tokens=8)
    assert a.p_yes is not None and 0.0 < a.p_yes < 1.0
    assert a.p_yes == b.p_yes
    assert Session(tiny_model).run(image, QUERY, max_tokens=2).p_yes is None


def contains_run(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_shadow_judge_reads_the_generated_answer_tokens(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    shadow = Session(tiny_model, EcsoConfig(shadow_judge=True, verdict_override=True)).run(image, QUERY, max_tokens=12)
    plain = Session(tiny_model, EcsoConfig(verdict_override=True)).run(image, QUERY, max_tokens=12)
    judge = shadow.stats["steps"]["judge"]
    # the answer went into the judge during step 1: only the closing question is left to prefill
    assert judge["tokens_shadowed"] >= 12
    assert judge["tokens_prefilled"] < plain.stats["steps"]["judge"]["tokens_prefilled"]
    assert judge["tokens_reused"] == shadow.stats["template_prefix_tokens"] + shadow.stats["image_tokens"]
    assert contains_run(shadow.steps[1].input_tokens, shadow.steps[0].tokens)
    head_and_image = shadow.stats["template_prefix_tokens"] + 1  # input_tokens: one -1 per image
    assert shadow.steps[1].input_tokens[:head_and_image] == plain.steps[1].input_tokens[:head_and_image]
    assert shadow.steps[1].input_tokens[head_and_image - 1] == -1
    assert shadow.stats["image_encodes"] == 1 and len(shadow.steps) == 4


def test_shadow_judge_is_ignored_without_kv_reuse(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    r = Session(tiny_model, EcsoConfig(shadow_judge=True, reuse_kv=False)).run(image, QUERY, max_tokens=6)
    assert r.stats["steps"]["judge"]["tokens_shadowed"] == 0
