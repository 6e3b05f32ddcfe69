"""Images that mtmd cuts into several media chunks (LLaVA-1.6's grid pinpoints: an overview and
its slices, all of one bitmap id). Each chunk has its own embeddings: with reuse every chunk is
encoded once per run, and every step's tokens equal the reference path's. Before the fix the
embedding cache was keyed by the image alone, so all five chunks got the first one's embeddings
(1 encode counted, and tokens that differed from the reference path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from gguf_mutate import Gguf, ValueType

QUERY = "What is in this picture?"


@pytest.fixture(scope="module")
def llava16_model(tiny_paths: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ecso_edge.Model:
    text, mmproj = tiny_paths
    out = tmp_path_factory.mktemp("llava16") / "tiny-llava16-mmproj.gguf"
    # the tiny projector sees 32 px: a 64x64 image becomes 2x2 slices plus the overview
    Gguf.read(mmproj).set_key("clip.vision.image_grid_pinpoints", [32, 64, 64, 32, 64, 64], ValueType.ARRAY,
                              ValueType.INT32).write(out)
    return ecso_edge.Model(text, out, n_threads=1, n_ctx=2048)


@pytest.fixture
def square() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("unsafe", [False, True])
def test_every_slice_is_encoded_once_and_reuse_matches_the_reference(llava16_model: ecso_edge.Model,
                                                                     square: np.ndarray, unsafe: bool) -> None:
    reused, reference = (Session(llava16_model, EcsoConfig(verdict_override=unsafe, reuse_kv=reuse))
                         .run(square, QUERY, max_tokens=8) for reuse in (True, False))
    media = [s.input_tokens.count(-1) for s in reused.steps]
    assert media[:3 if unsafe else 2] == [5] * (3 if unsafe else 2)  # five chunks in each image step
    assert reused.stats["image_encodes"] == 5
    assert reference.stats["image_encodes"] == 5 * (3 if unsafe else 2)
    assert [s.tokens for s in reused.steps] == [s.tokens for s in reference.steps]
    assert reused.steps[1].stats["tokens_reused"] >= reused.stats["template_prefix_tokens"] + reused.stats[
        "image_tokens"]


def test_two_different_images_do_not_share_slices(llava16_model: ecso_edge.Model, square: np.ndarray) -> None:
    session = Session(llava16_model, EcsoConfig(verdict_override=True))
    other = square[::-1].copy()
    first = session.run(square, QUERY, max_tokens=8)
    second = session.run(other, QUERY, max_tokens=8)
    fresh = Session(llava16_model, EcsoConfig(verdict_override=True)).run(other, QUERY, max_tokens=8)
    assert second.stats["image_encodes"] == 5 and first.stats["image_encodes"] == 5
    assert [s.tokens for s in second.steps] == [s.tokens for s in fresh.steps]
