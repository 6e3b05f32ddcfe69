"""The repository's own text: it speaks of itself, so no file cites a tracker's numbered entries
(an upstream llama.cpp issue, linked or named as such, is a public reference and allowed), every
document a file cites is in the repository, and docs/paper-method.md quotes the prompts that
EcsoConfig's defaults really are."""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

import ecso_edge

REPO = Path(__file__).resolve().parent.parent

# the word issue or ticket followed by a number, or the tracker's notes named as such; the number
# or the notes make it a tracker's (test_the_tracker_matcher_... shows examples)
TRACKER = re.compile(r"\b(?:issues?|tickets?)\s*#?\s*[0-9]+\b|\x60issues\x60\s+notes|\bissue\s+tracker\b", re.IGNORECASE)
# what may stand just before such words: an upstream project's issue is a public reference
UPSTREAM = re.compile(r"(llama\.cpp|ggml|upstream|github\.com/\S*)[^\n]{0,12}$", re.IGNORECASE)
# a document named in code, comments or prose: a path from the repository root or the citing
# file's folder, or a bare file name
DOC_MENTION = re.compile(r"(?<![\w./:-])([\w./-]*[\w-]\.md)\b")  # not inside a URL
# Markdown files the code writes (eval's report), named but not tracked
WRITTEN = {"report.md"}
# a relative Markdown link, checked from the linking file's folder
MD_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+?)(?:#[^)]*)?\)")


@lru_cache(maxsize=1)
def tracked_text_files() -> tuple[tuple[str, str], ...]:
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"the repository's files are listed with git, which failed: {e}")
    files = []
    for name in listed.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # GGUF, PNG, JPEG: not text
        files.append((name, data.decode("utf-8", errors="replace")))
    assert len(files) > 100, "git listed too few files: not the repository's checkout"
    return tuple(files)


def tracker_citations(text: str) -> list[str]:
    found = []
    for m in TRACKER.finditer(text):
        if not UPSTREAM.search(text[max(0, m.start() - 60):m.start()]):
            found.append(m.group(0))
    return found


def test_the_tracker_matcher_flags_citations_and_allows_upstream_ones() -> None:
    issue = "iss" + "ue"  # spelled apart, so that this file itself passes the check below
    assert tracker_citations(f"this is for {issue} 14.") == [f"{issue} 14"]
    assert tracker_citations(f"findings of {issue} #11 included") == [f"{issue} #11"]
    assert tracker_citations(f"see `{issue}s` notes") == [f"`{issue}s` notes"]
    assert tracker_citations(f"llama-cpp-python too; llama.cpp {issue} 20824), and") == []
    assert tracker_citations(f"https://github.com/ggml-org/llama.cpp/{issue}s/20824") == []
    assert tracker_citations(f"one {issue} with the figure: 3 cases") == []


def test_no_file_cites_the_tracker() -> None:
    found = {name: hits for name, text in tracked_text_files() if (hits := tracker_citations(text))}
    assert found == {}, "say the reason itself, or link the public upstream issue"


def test_every_document_a_file_cites_is_in_the_repository() -> None:
    files = tracked_text_files()
    documents = {Path(name).name for name, _ in files if name.endswith(".md")}
    missing = set()
    for name, text in files:
        for cited in DOC_MENTION.findall(text):
            if "/" in cited:
                found = (REPO / cited).is_file() or (REPO / name).parent.joinpath(cited).is_file()
            else:
                found = cited in documents or cited in WRITTEN
            if not found:
                missing.add(f"{name}: {cited}")
        if name.endswith(".md"):
            for link in MD_LINK.findall(text):
                if not (REPO / name).parent.joinpath(link).exists():
                    missing.add(f"{name}: {link}")
    assert not missing, sorted(missing)


def _blocks_after(doc: str, heading: str) -> str:
    """The first ```text block after the line that contains `heading`."""
    at = doc.index(heading)
    m = re.search(r"```text\n(.*?)\n```", doc[at:], re.DOTALL)
    assert m, heading
    return m.group(1)


def test_the_paper_method_page_quotes_the_default_prompts() -> None:
    doc = (REPO / "docs" / "paper-method.md").read_text()
    c = ecso_edge.EcsoConfig()
    assert _blocks_after(doc, "(`EcsoConfig.judge_template`)") == c.judge_template
    assert _blocks_after(doc, "(`EcsoConfig.caption_template`)") == c.caption_template
    assert _blocks_after(doc, "(`EcsoConfig.text_only_template`)") == c.text_only_template
    assert _blocks_after(doc, "(`EcsoConfig.system_prompt`)") == ecso_edge.EcsoConfig.paper_preset().system_prompt
    assert f"**{c.response_cut_chars} characters**" in doc
    assert c.verdict_rule == "exact" and c.image_placement == "before"
    prose = " ".join(doc.split())
    assert "must be exactly `yes` or `yes.`" in prose and "**image first, then a newline, then the text**" in prose


def test_the_docs_index_links_every_docs_page() -> None:
    # docs/README.md is the one place a newcomer finds the reference pages: a page it leaves out is
    # found by no one
    index = (REPO / "docs" / "README.md").read_text()
    linked = set(MD_LINK.findall(index))
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, sorted(pages - linked)
    assert "docs/README.md" in (REPO / "README.md").read_text()
