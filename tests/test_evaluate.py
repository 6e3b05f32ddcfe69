"""The evaluation harness on a small MM-SafetyBench-shaped fixture (images made by make-typo):
the report's numbers match a hand count from the per-item results, and all report files are
written. Also the judge-only call and the TYPO renderer."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.evaluate import evaluate, is_refusal, load_benchmark
from ecso_edge.report.eval_tables import write_report
from ecso_edge.typo import make_typo_images, render_typo


def make_mm_safetybench(root: Path) -> None:
    questions = root / "data" / "processed_questions"
    questions.mkdir(parents=True)
    for scenario, n in (("01-Illegal_Activitiy", 3), ("02-HateSpeech", 2), ("08-Political_Lobbying", 1)):
        items = {
            str(i): {"Question": f"q{i}", "Key Phrase": f"key phrase number {i} of {scenario}",
                     "Rephrased Question": f"The bottom of the image shows a phrase {i}. How to do it?",
                     "Rephrased Question(SD)": f"How do I do what the image shows {i}?"}
            for i in range(n)
        }
        (questions / f"{scenario}.json").write_text(json.dumps(items))


def test_make_typo_renders_every_key_phrase(tmp_path: Path) -> None:
    make_mm_safetybench(tmp_path)
    assert make_typo_images(tmp_path) == 6
    img = Image.open(tmp_path / "data" / "imgs" / "01-Illegal_Activitiy" / "TYPO" / "0.jpg")
    assert img.size[0] == 1024
    pixels = np.asarray(img.convert("L"))
    assert pixels.min() < 60 and np.median(pixels) > 200  # black text on white
    assert render_typo("a " * 60).size[1] > render_typo("short").size[1]  # long phrases wrap


def test_report_numbers_match_a_hand_count(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    make_mm_safetybench(tmp_path)
    make_typo_images(tmp_path)
    items, image_root = load_benchmark("mm-safetybench", tmp_path, variant="TYPO")
    # the paper's scenarios: 08 is left out by default
    assert sorted({s for s, _ in items}) == ["01-Illegal_Activitiy", "02-HateSpeech"] and len(items) == 5
    session = Session(tiny_model, EcsoConfig(verdict_override=True, max_tokens_judge=2))
    report = evaluate(session, items, image_root, max_tokens=6, progress=False)
    for scenario in ("01-Illegal_Activitiy", "02-HateSpeech"):
        rows = [e for e in report.items if e["scenario"] == scenario]
        tally = report.per_scenario[scenario]
        assert tally.n == len(rows) and tally.unsafe == len(rows)
        assert tally.direct_keyword == sum(is_refusal(e["direct"]) for e in rows)
        assert tally.ecso_keyword == sum(is_refusal(e["ecso"]) for e in rows)
        assert tally.ecso_judge == sum(not e["ecso_judged_unsafe"] for e in rows)
        assert tally.direct_judge == sum(not e["judged_unsafe"] for e in rows)
        assert tally.keyword_ecso_only == sum(is_refusal(e["ecso"]) and not is_refusal(e["direct"]) for e in rows)
    paths = write_report(report, tmp_path / "out", "MM-SafetyBench (TYPO)")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["scenario"] for r in rows] == ["01-Illegal_Activitiy", "02-HateSpeech", "overall"]
    assert int(rows[-1]["n"]) == 5
    assert "| **overall** | 5 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["svg"].read_text().lstrip().startswith("<?xml")
    assert paths["html"].read_text().count('<details class="item">') == 5
    assert json.loads(paths["json"].read_text())["overall"]["n"] == 5


def test_judge_alone_gives_the_runs_verdict(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    session = Session(tiny_model, EcsoConfig())
    r = session.run(image, "What is this?", max_tokens=8)
    j = session.judge(image, "What is this?", r.initial_answer)
    assert j.verdict_text == r.verdict_text and j.steps[0].tokens == r.steps[1].tokens
    yes = tiny_model.tokenize("yes")[0]
    forced = Session(tiny_model, EcsoConfig(logit_bias={yes: 100.0}, max_tokens_judge=1, verdict_override=False))
    assert forced.judge(image, "q", "some answer").unsafe  # verdict_override does not apply


def test_own_judge_metric_follows_the_configured_verdict_rule(
    tiny_model: ecso_edge.Model, tmp_path: Path
) -> None:
    make_mm_safetybench(tmp_path)
    make_typo_images(tmp_path)
    items, image_root = load_benchmark("mm-safetybench", tmp_path, variant="TYPO", scenarios=["02"])
    yes = tiny_model.tokenize("yes")[0]
    # the judge answers "yes yes": harmful under the prefix rule, not under the paper's exact rule
    for rule, harmless in (("exact", 100.0), ("prefix", 0.0)):
        cfg = EcsoConfig(logit_bias={yes: 100.0}, max_tokens_judge=2, verdict_rule=rule, verdict_override=False)
        report = evaluate(Session(tiny_model, cfg), items, image_root, max_tokens=4, progress=False)
        assert report.overall().rates()["direct_judge"] == harmless, rule


def test_refusal_keywords() -> None:
    assert is_refusal("I'm sorry, but I cannot help with that.")
    assert not is_refusal("The image shows a red square on a gradient.")


def test_eval_command_writes_the_report(tmp_path: Path) -> None:
    make_mm_safetybench(tmp_path)
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    typo = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "make-typo", "--root", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert typo.returncode == 0 and "wrote 6 TYPO images" in typo.stdout, typo.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "ecso_edge.cli", "eval", "--benchmark", "mm-safetybench", "--root", str(tmp_path),
         "--variant", "TYPO", "--out-dir", str(tmp_path / "rep"), "--max-tokens", "4", "--threads", "1",
         "--config", '{"verdict_override": true}'],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| **overall** | 5 |" in proc.stdout
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["run"]["config"]["verdict_override"] is True and report["run"]["variant"] == "TYPO"
    assert report["overall"]["unsafe"] == 5  # the forced branch: every item took steps 3 and 4
    bad = subprocess.run(
        [sys.executable, "-m", "ecso_edge.cli", "eval", "--benchmark", "mm-safetybench", "--root", str(tmp_path),
         "--config", '{"verdict_overide": true}'], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "--config:" in bad.stderr and "verdict_overide" in bad.stderr
    for name in ("report.png", "report.svg", "report.html"):
        assert (tmp_path / "rep" / name).is_file()


def test_unknown_benchmark_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ecso_edge.ConfigError, match="unknown benchmark"):
        load_benchmark("mmbench", tmp_path)
    with pytest.raises(ecso_edge.ConfigError, match="processed_questions"):
        load_benchmark("mm-safetybench", tmp_path)
