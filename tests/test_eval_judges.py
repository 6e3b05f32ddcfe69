"""`ecso-edge eval` with independent judges, end to end through the command line: the api metric
over a real HTTP endpoint (scripted replies, so the counts are known), a failed judgement counted
apart, an unreachable endpoint refused before any item runs, and the flags that go together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import ecso_edge
from conftest import make_image
from test_api_judge import closed_port_url, completion
from test_api_judge import scripted as endpoint  # noqa: F401  (a fixture: scripted HTTP servers)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.fromarray(make_image()).save(tmp_path / "images" / "a.png")
    rows = [{"id": str(i), "image": "a.png", "query": f"How do I do thing {i}?"} for i in range(3)]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(dataset: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    text, mmproj = ecso_edge.tiny_pair()
    return subprocess.run([sys.executable, "-m", "ecso_edge.cli", "eval", "--benchmark", "jsonl", "--root",
                           str(dataset), "--model", str(text), "--mmproj", str(mmproj), "--max-tokens", "4",
                           "--out-dir", str(out), *flags], capture_output=True, text=True, timeout=300)


def test_the_api_metric_scores_both_answers_and_counts_failures_apart(dataset: Path, tmp_path: Path,
                                                                      endpoint: Any) -> None:
    # forced unsafe: ECSO's answer differs from Direct's, so each item asks the endpoint twice.
    # The check, then six judgements: unsafe, safe, unsafe, an unreadable reply, safe, safe.
    replies = ["ok", "unsafe", "safe", "unsafe", "I think so", "safe", "safe"]
    server = endpoint(*[(200, {}, completion(r)) for r in replies])
    proc = _eval(dataset, tmp_path / "out", "--judge-url", server.url, "--config", '{"verdict_override": true}')
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == 7
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    overall = report["overall"]
    assert report["metrics"] == ["keyword", "api"]
    assert (overall["judged"]["api"], overall["failed"]["api"]) == (2, 1)
    # items 0 and 2 count (item 1's ECSO answer was not judged): Direct harmless on item 2 only
    assert (overall["harmless"]["direct_api"], overall["harmless"]["ecso_api"]) == (1, 2)
    assert overall["paired"]["api"]["ecso_only"] == 1 and overall["paired"]["api"]["direct_only"] == 0
    failed = report["items"][1]["judges"]["api"]["ecso"]
    assert failed["unsafe"] is None and failed["raw"] == "I think so" and "neither" in failed["error"]
    assert report["items"][1]["harmless"]["ecso_api"] is None
    assert report["run"]["trigger"] == "self" and "MM-SafetyBench" in report["run"]["metrics"]["api"]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| scenario"))
    assert "Direct (api)" in header and "not judged (api)" in header and "trigger unsafe" in header
    assert "(judge)" not in header


def test_an_unreachable_endpoint_stops_eval_before_any_item(dataset: Path, tmp_path: Path) -> None:
    url = closed_port_url()
    proc = _eval(dataset, tmp_path / "out", "--judge-url", url)
    assert proc.returncode != 0 and url in proc.stderr and "refused" in proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_judge_flags_that_go_together(dataset: Path, tmp_path: Path) -> None:
    proc = _eval(dataset, tmp_path / "out", "--judge-api-model", "gpt-4o")
    assert proc.returncode != 0 and "--judge-api-model goes with --judge-url" in proc.stderr
    proc = _eval(dataset, tmp_path / "out", "--judge-format", "yes-no")
    assert proc.returncode != 0 and "--judge-format goes with --judge-model" in proc.stderr
