"""Every ECSO step's greedy tokens equal the ones llama.cpp itself picks for that step's prompt
(`tests/llama_reference.py`: mtmd_tokenize_from_parts + mtmd_helper_eval_chunks in a fresh context,
through llama-cpp-python), with KV reuse on: per family, on its generated tiny pair (LLaVA-1.6: an
image is five media chunks; Gemma 3: non-causal image attention and a sliding window)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session, tiny_models
from llama_reference import LlamaReference

N_CTX = 1024
QUERY = "What is shown here? Answer {briefly}."
MEDIA = "<__media__>"  # mtmd's default marker, where the image goes in a user message


def fill(template: str, **values: str) -> str:
    """prompts::fill: one pass, known placeholders only."""
    return re.sub(r"\{([^{}]*)\}", lambda m: values.get(m.group(1), m.group(0)), template)


@pytest.fixture(scope="module", params=list(tiny_models.FAMILIES))
def pair(request: pytest.FixtureRequest, family_pairs: dict[str, tuple[Path, Path]]) -> tuple[Path, Path, np.ndarray]:
    text, mmproj = family_pairs[request.param]
    size = (40, 48, 3) if request.param == "llava15" else (64, 64, 3)
    return text, mmproj, np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(pair: tuple[Path, Path, np.ndarray]) -> Iterator[LlamaReference]:
    ref = LlamaReference(pair[0], pair[1], n_ctx=N_CTX)
    yield ref
    ref.close()


def test_every_step_picks_llama_cpps_tokens(pair: tuple[Path, Path, np.ndarray], reference: LlamaReference) -> None:
    text, mmproj, image = pair
    model = ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=N_CTX)
    # the paper's prompts on every family: each then frames LLaVA's line in its own template
    config = EcsoConfig.paper_preset().replace(verdict_override=True)
    assert config.system_prompt is not None
    system = config.system_prompt
    session = Session(model, config)
    r = session.run(image, QUERY, max_tokens=40)

    def image_step(user_text: str) -> list[tuple[str, bool]]:
        # the user's turn is the image, a newline and the text: framed by llama.cpp around all of it
        head, tail = reference.frame(system, MEDIA + "\n" + user_text)
        return [(head, True), ("\n" + user_text, False), (tail, True)]  # the image goes after the head

    def text_step(user_text: str) -> list[tuple[str, bool]]:
        head, tail = reference.frame(system, user_text)
        return [(head, True), (user_text, False), (tail, True)]

    judge = fill(config.judge_template, query=QUERY, response=r.initial_answer[: config.response_cut_chars])
    caption = fill(config.caption_template, query=QUERY)
    assert r.caption is not None
    text_only = fill(config.text_only_template, query=QUERY, caption=r.caption)
    expected = {
        "answer": reference.greedy(image_step(QUERY), image, 1, 40),
        "judge": reference.greedy(image_step(judge), image, 1, config.max_tokens_judge),
        "caption": reference.greedy(image_step(caption), image, 1, 40),
        "text_only": reference.greedy(text_step(text_only), None, 0, 40),
    }
    assert {s.name: s.tokens for s in r.steps} == expected
    assert all(expected.values())  # every step generated something to compare


def test_the_llava_pair_is_framed_as_vicuna_written_out(family_pairs: dict[str, tuple[Path, Path]]) -> None:
    # The LLaVA pair is framed by vicuna, in ecso-edge and in llama.cpp: spelled out here, so that a
    # framing both got wrong the same way would still fail. Its default system message is the paper's.
    text, mmproj = family_pairs["llava15"]
    system = EcsoConfig.paper_preset().system_prompt
    assert system is not None
    expected = (system + "\n\nUSER: ", "\nASSISTANT:")
    session = Session(ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=256))
    assert (session._core.prompt_head, session._core.prompt_tail) == expected
    ref = LlamaReference(text, mmproj, n_ctx=256)
    try:
        assert ref.frame(system, MEDIA + "\n" + QUERY) == expected
    finally:
        ref.close()
