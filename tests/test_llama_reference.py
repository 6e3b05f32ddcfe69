"""Every ECSO step's greedy tokens equal the ones llama.cpp itself picks for that step's prompt
(`tests/llama_reference.py`: mtmd_tokenize_from_parts + mtmd_helper_eval_chunks in a fresh context,
through llama-cpp-python), with KV reuse on: for the LLaVA-1.5 tiny pair and for a LLaVA-1.6 pair
(grid pinpoints: an image is five media chunks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from gguf_mutate import Gguf, ValueType
from llama_reference import LlamaReference

N_CTX = 1024
QUERY = "What is shown here? Answer {briefly}."


def fill(template: str, **values: str) -> str:
    """prompts::fill: one pass, known placeholders only."""
    return re.sub(r"\{([^{}]*)\}", lambda m: values.get(m.group(1), m.group(0)), template)


@pytest.fixture(scope="module", params=["llava15", "llava16"])
def pair(request: pytest.FixtureRequest, tiny_paths: tuple[Path, Path],
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    text, mmproj = tiny_paths
    if request.param == "llava16":
        out = tmp_path_factory.mktemp("llava16") / "mmproj.gguf"
        Gguf.read(mmproj).set_key("clip.vision.image_grid_pinpoints", [32, 64, 64, 32, 64, 64], ValueType.ARRAY,
                                  ValueType.INT32).write(out)
        return text, out, np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return text, mmproj, np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(pair: tuple[Path, Path, np.ndarray]) -> Iterator[LlamaReference]:
    ref = LlamaReference(pair[0], pair[1], n_ctx=N_CTX)
    yield ref
    ref.close()


def test_every_step_picks_llama_cpps_tokens(pair: tuple[Path, Path, np.ndarray], reference: LlamaReference) -> None:
    text, mmproj, image = pair
    model = ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=N_CTX)
    config = EcsoConfig(verdict_override=True)
    session = Session(model, config)
    r = session.run(image, QUERY, max_tokens=12)
    head, tail = session._core.prompt_head, session._core.prompt_tail

    def image_step(user_text: str) -> list[tuple[str, bool]]:
        return [(head, True), ("\n" + user_text, False), (tail, True)]  # the image goes after the head

    judge = fill(config.judge_template, query=QUERY, response=r.initial_answer[: config.response_cut_chars])
    caption = fill(config.caption_template, query=QUERY)
    assert r.caption is not None
    text_only = fill(config.text_only_template, query=QUERY, caption=r.caption)
    expected = {
        "answer": reference.greedy(image_step(QUERY), image, 1, 12),
        "judge": reference.greedy(image_step(judge), image, 1, config.max_tokens_judge),
        "caption": reference.greedy(image_step(caption), image, 1, 12),
        "text_only": reference.greedy([(head, True), (text_only, False), (tail, True)], None, 0, 12),
    }
    assert {s.name: s.tokens for s in r.steps} == expected
    assert all(expected.values())  # every step generated something to compare
