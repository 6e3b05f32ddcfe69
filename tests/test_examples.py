"""The example run on the fixture datasets in examples/: the exact command lines of its
`example-run: commands` block (docs/evaluation.md), run in a copy of examples/, give the outputs the page shows."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


EXAMPLE_RUN_PAGE = ROOT / "docs" / "evaluation.md"


def doc_block(marker: str) -> str:
    """The fenced block that follows `<!-- example-run: {marker} ...-->` on the example run's page."""
    text = EXAMPLE_RUN_PAGE.read_text(encoding="utf-8")
    m = re.search(r"<!-- example-run: " + re.escape(marker) + r"\b[^>]*-->\n```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"{EXAMPLE_RUN_PAGE.name} has no example-run block '{marker}'"
    return m.group(1)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Runs the page's commands, in order, in a folder holding a copy of examples/."""
    work = tmp_path_factory.mktemp("readme-example")
    shutil.copytree(ROOT / "examples", work / "examples")
    outputs = []
    for line in doc_block("commands").strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "ecso-edge", line
        proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", *argv[1:]], cwd=work, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stderr}"
        assert "warning: no --model/--mmproj given" not in proc.stderr, f"{line}: say --tiny or name a pair"
        outputs.append(proc.stdout)
    return work, outputs


def test_data_engine_example(example_run: tuple[Path, list[str]]) -> None:
    work, outputs = example_run
    summary = outputs[0].strip().splitlines()[-1]
    assert re.fullmatch(
        r"4 records in [0-9.]+ s \(0 already done\), 0 unsafe, 1 errors; 3 SFT examples in ecso-out/sft.json, "
        r"trace in ecso-out/sft.trace.jsonl", summary), summary
    sft = json.loads((work / "ecso-out" / "sft.json").read_text())
    assert [e["id"] for e in sft] == ["ex-1", "ex-2", "ex-4"]
    assert all(e["conversations"][0]["value"].startswith("<image>\n") for e in sft)
    trace = [json.loads(line) for line in (work / "ecso-out" / "sft.trace.jsonl").read_text().splitlines()]
    broken = [t for t in trace if "error" in t]
    shown = json.loads(doc_block("trace"))
    assert broken == [shown]


def test_eval_example_prints_the_table_it_shows(example_run: tuple[Path, list[str]]) -> None:
    work, outputs = example_run
    assert outputs[1].strip() == "wrote 6 TYPO images under examples/mm-safetybench-mini/data/imgs"
    table = [line for line in outputs[2].splitlines() if line.startswith("|")]
    assert table == doc_block("eval table").strip().splitlines()
    for name in ("report.md", "report.csv", "report.json", "report.html", "report.png", "report.svg"):
        assert (work / "ecso-out" / "eval" / name).stat().st_size > 0
