"""The fuzz suite: damaged GGUF files, hostile images, hostile queries, every option a user can
set (fuzz_option_inputs.py) and damaged session state files (fuzz_state_inputs.py), each case
executed in a worker process (fuzz_harness.py) so that a crash or a hang is caught and counted,
not fatal.

Every case must end ok or with a typed EcsoError. Crashes, hangs, other exception classes and
broken invariants (an extra image slot, say) fail the test, with a reproducer per finding.
`pytest -m fuzz` runs the full seeded budget (a few minutes); a plain `pytest` run (CI) a short
seeded subset of the same generators. ECSO_FUZZ_CASES / ECSO_FUZZ_SEED / ECSO_FUZZ_ARTIFACTS
override the budget, the seed and where reports and reproducers go (docs/robustness.md).
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_gguf_inputs  # noqa: E402
import fuzz_harness  # noqa: E402
import fuzz_image_inputs  # noqa: E402
import fuzz_option_inputs  # noqa: E402
import fuzz_prompt_inputs  # noqa: E402
import fuzz_state_inputs  # noqa: E402
import fuzz_worker  # noqa: E402

pytestmark = pytest.mark.fuzz

# (plain pytest run, pytest -m fuzz); the option sweep's full run is all of it
BUDGETS = {"gguf": (300, 5000), "image": (400, 5000), "prompt": (300, 4000), "option": (150, 1000),
           "option-sweep": (300, 0), "state": (20, 600)}
# An option case is small (the slowest valid ones take about 10 s): one that has not answered in
# 20 s hangs. A lower limit than the other campaigns' keeps a known hang cheap. Cases with hundreds
# of threads run alone in a fresh worker, under the usual 60 s.
OPTION_CASE_TIMEOUT_S = 20.0


def full_run(config: pytest.Config) -> bool:
    return "fuzz" in (config.getoption("markexpr") or "") or os.environ.get("ECSO_FUZZ_FULL") == "1"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("ECSO_FUZZ_ARTIFACTS")
    return Path(where) if where else tmp_path_factory.mktemp("fuzz-artifacts")


@pytest.fixture(scope="module")
def worker(artifacts: Path) -> Iterator[fuzz_harness.Worker]:
    w = fuzz_harness.Worker(artifacts / "worker.log")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def option_worker(artifacts: Path) -> Iterator[fuzz_harness.Worker]:
    w = fuzz_harness.Worker(artifacts / "option-worker.log", timeout=OPTION_CASE_TIMEOUT_S)
    yield w
    w.stop()


def campaign(request: pytest.FixtureRequest, name: str, artifacts: Path, worker: fuzz_harness.Worker,
             cases: st.SearchStrategy[Any], run_case: Callable[[fuzz_harness.Campaign, Any], None]) -> None:
    """Draws the target's budget of seeded cases, runs each in the worker, then fails on any finding."""
    c = fuzz_harness.Campaign(name, artifacts, worker)
    n = fuzz_harness.budget(name, full_run(request.config), BUDGETS)

    # generation only: no shrinking (a finding's reproducer is saved as found) and no example database
    @hypothesis_seed(fuzz_harness.seed())
    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def one(case: Any) -> None:
        run_case(c, case)

    one()
    report = c.write_report()
    print(f"\n{name}: {c.cases} cases, outcomes {dict(c.outcomes)}; report {report}")
    assert not c.findings, c.failure_message()
    assert c.cases >= min(n, 20)


def case_paths(artifacts: Path, name: str) -> Callable[[str], Path]:
    """Where a campaign writes its case files: numbered in the order drawn, in a folder of its own
    (a finding's reproducer copies its file; the others are deleted after their case)."""
    work = artifacts / f"{name}-work"
    work.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count(1)
    return lambda tail: work / f"case-{next(numbers):05d}{tail}"


def test_fuzz_gguf_files(request: pytest.FixtureRequest, artifacts: Path, worker: fuzz_harness.Worker,
                         tiny_paths: tuple[Path, Path]) -> None:
    text, mmproj = tiny_paths
    bases = fuzz_gguf_inputs.Bases(text, mmproj)
    next_path = case_paths(artifacts, "gguf")

    def run_case(c: fuzz_harness.Campaign, case: dict[str, Any]) -> None:
        out = next_path(f"-{case['target']}.gguf")
        try:
            fuzz_gguf_inputs.apply(bases.gguf[case["target"]], case, out)
        except (ValueError, OverflowError, struct.error) as e:  # a mutation the gguf writer cannot express
            c.skipped.append(f"{type(e).__name__}: {e}"[:200])
            return
        pair = {"text": str(text), "mmproj": str(mmproj), case["target"]: str(out)}
        c.run({"kind": "gguf", **pair, "mutation": case}, files=(out,))
        out.unlink()

    campaign(request, "gguf", artifacts, worker, fuzz_gguf_inputs.gguf_cases(bases), run_case)


# Sweep targets per family: a text model whose arch another family's sweep covers is left out
# (LLaVA-1.6 shares LLaVA-1.5's text model; MiniCPM-V 2.5's and MobileVLM's `llama` and 2.6's `qwen2` are
# swept with LLaVA-1.5's and InternVL's).
SWEEP_TARGETS = {"llava15": ("text", "mmproj"), "llava16": ("mmproj",), "gemma3": ("text", "mmproj"),
                 "qwen2.5vl": ("text", "mmproj"), "smolvlm": ("text", "mmproj"),
                 "qwen3vl": ("text", "mmproj"), "qwen2vl": ("mmproj",),
                 "pixtral": ("text", "mmproj"), "internvl": ("text", "mmproj"),
                 "minicpmv": ("mmproj",), "minicpmv2.5": ("mmproj",), "mobilevlm": ("mmproj",),
                 "mobilevlm1": ("mmproj",)}
# At least this many cases, so a sweep that silently shrinks fails.
SWEEP_MIN_CASES = {"llava15": 1000, "llava16": 400, "gemma3": 1000, "qwen2.5vl": 1000, "smolvlm": 1000, "qwen3vl": 1000, "qwen2vl": 500, "pixtral": 1000, "internvl": 1000, "minicpmv": 500, "minicpmv2.5": 500, "mobilevlm": 500, "mobilevlm1": 500}


@pytest.mark.parametrize("family", list(SWEEP_TARGETS))
def test_fuzz_gguf_single_edit_sweep(artifacts: Path, worker: fuzz_harness.Worker,
                                     family_pairs: dict[str, tuple[Path, Path]], family: str) -> None:
    """Not random: every key and tensor of the family's pair, one edit at a time (the same cases in
    every run). A crash of the worker is a finding; a clean error or a run is not."""
    text, mmproj = family_pairs[family]
    work = artifacts / f"gguf-sweep-{family}-work"
    work.mkdir(parents=True, exist_ok=True)
    bases = fuzz_gguf_inputs.Bases(text, mmproj)
    c = fuzz_harness.Campaign(f"gguf-sweep-{family}", artifacts, worker)
    for k, case in enumerate(fuzz_gguf_inputs.single_edit_sweep(bases, SWEEP_TARGETS[family])):
        out = work / f"case-{k:05d}-{case['target']}.gguf"
        try:
            fuzz_gguf_inputs.apply(bases.gguf[case["target"]], case, out)
        except (ValueError, OverflowError, struct.error) as e:
            c.skipped.append(f"{type(e).__name__}: {e}"[:200])
            continue
        pair = {"text": str(text), "mmproj": str(mmproj), case["target"]: str(out)}
        c.run({"kind": "gguf", **pair, "mutation": case}, files=(out,))
        out.unlink()
    report = c.write_report()
    print(f"\ngguf-sweep-{family}: {c.cases} cases, outcomes {dict(c.outcomes)}; report {report}")
    assert not c.findings, c.failure_message()
    assert c.cases > SWEEP_MIN_CASES[family]


def test_fuzz_images(request: pytest.FixtureRequest, artifacts: Path, worker: fuzz_harness.Worker) -> None:
    seeds = fuzz_image_inputs.seed_images()
    paths = fuzz_image_inputs.path_cases(artifacts / "image-paths", seeds)
    campaign(request, "image", artifacts, worker, fuzz_image_inputs.image_cases(seeds, paths),
             lambda c, case: c.run(case))


def test_fuzz_prompts(request: pytest.FixtureRequest, artifacts: Path, worker: fuzz_harness.Worker) -> None:
    campaign(request, "prompt", artifacts, worker, fuzz_prompt_inputs.prompt_cases(), lambda c, case: c.run(case))


def state_bases(tiny_paths: tuple[Path, Path]) -> tuple[fuzz_state_inputs.Bases, dict[str, dict[str, Any]]]:
    """The files the state campaign damages, as a session of the worker's model writes them, and
    the turn that continues each one's conversation: three turns with two images on the unsafe
    branch (one slot, captions), and two conversations of a parallel=2 session (two slots)."""
    import ecso_edge
    from conftest import make_image
    from test_conversations import TURNS, converse, user
    from test_session_state import follow_up

    model = ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=fuzz_worker.N_CTX)
    with tempfile.TemporaryDirectory() as where:
        unsafe = ecso_edge.Session(model, ecso_edge.EcsoConfig(verdict_override=True, max_tokens_judge=2))
        first = follow_up(converse(unsafe, TURNS[:3], max_tokens=6), TURNS)
        unsafe.save_state(f"{where}/a")
        lanes = ecso_edge.Session(model, ecso_edge.EcsoConfig(verdict_override=False, max_tokens_judge=2), parallel=2)
        other = [user("What is in it?", make_image(32, 32, seed=3)), user("Go on.")]
        second = follow_up(converse(lanes, TURNS[:2], max_tokens=6), TURNS)
        converse(lanes, other[:1], max_tokens=6)
        lanes.save_state(f"{where}/b")
        files = {"three-turns": Path(f"{where}/a").read_bytes(), "two-lanes": Path(f"{where}/b").read_bytes()}
    turns = {"three-turns": {"messages": first, "unsafe": True, "parallel": 1},
             "two-lanes": {"messages": second, "unsafe": False, "parallel": 2}}
    return fuzz_state_inputs.Bases(files), turns


def test_fuzz_state_files(request: pytest.FixtureRequest, artifacts: Path, worker: fuzz_harness.Worker,
                          tiny_paths: tuple[Path, Path]) -> None:
    """Every damaged state file must be refused with StateFileError or load; one that loads must
    then continue its conversation (where llama.cpp reads the KV bytes) or end in a typed error."""
    bases, turns = state_bases(tiny_paths)
    next_path = case_paths(artifacts, "state")

    def run_case(c: fuzz_harness.Campaign, case: dict[str, Any]) -> None:
        out = next_path(".ecso")
        out.write_bytes(fuzz_state_inputs.apply(bases, case))
        c.run({"kind": "state", "state": str(out), **turns[case["base"]], "mutation": case}, files=(out,))
        out.unlink()

    campaign(request, "state", artifacts, worker, fuzz_state_inputs.state_cases(bases), run_case)


def test_fuzz_option_sweep(request: pytest.FixtureRequest, artifacts: Path,
                           option_worker: fuzz_harness.Worker) -> None:
    """Not random: every option of every surface (Model, EcsoConfig, Session, ServerOptions, serve(),
    the CLI flags, the chat request's fields and structure) with every value of its pool. A plain
    run takes a seeded sample that holds every option at least once."""
    cases = list(fuzz_option_inputs.option_sweep())
    n = fuzz_harness.budget("option-sweep", full_run(request.config), BUDGETS)
    if n and n < len(cases):
        cases = fuzz_option_inputs.sample_sweep(cases, n, fuzz_harness.seed())
    c = fuzz_harness.Campaign("option-sweep", artifacts, option_worker)
    for case in cases:
        run_option_case(c, option_worker, case)
    report = c.write_report()
    print(f"\noption-sweep: {c.cases} cases, outcomes {dict(c.outcomes)}; slowest {c.slowest:.2f} s; report {report}")
    assert not c.findings, c.failure_message()
    assert c.cases == len(cases)


def test_fuzz_options(request: pytest.FixtureRequest, artifacts: Path, option_worker: fuzz_harness.Worker) -> None:
    """Random: several options at once, values near the boundaries, and chat bodies with random edits."""
    campaign(request, "option", artifacts, option_worker, fuzz_option_inputs.option_cases(),
             lambda c, case: run_option_case(c, option_worker, case))


def run_option_case(c: fuzz_harness.Campaign, worker: fuzz_harness.Worker, case: dict[str, Any]) -> None:
    if not case.get("fresh_worker"):
        c.run(case)
        return
    worker.stop()
    worker.timeout = fuzz_harness.CASE_TIMEOUT_S
    try:
        c.run(case)
    finally:
        worker.stop()
        worker.timeout = OPTION_CASE_TIMEOUT_S
