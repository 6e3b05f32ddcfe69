"""The demo page of `ecso-edge serve` in headless Chromium (Debian's `chromium`, driven by
Playwright without its own browser download): pick an image, ask, see the streamed answer and the
details panel, all equal to what the in-process Session computes. Set ECSO_DEMO_SCREENSHOT to a
path to keep the screenshot (docs/server-demo.png was made that way)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import ecso_edge
from ecso_edge import EcsoConfig, Session
from serve_helpers import ServerProcess, png_bytes

QUERY = "What is in this picture and how do I make it?"
MAX_TOKENS = 24


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def demo_picture() -> np.ndarray:
    """A picture a person would recognise as one (the CLI demo's): a red square on a gradient."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, np.full_like(x, 160)], axis=2).astype(np.uint8)
    img[20:44, 20:44] = (220, 30, 30)
    return img


@pytest.fixture(scope="module")
def unsafe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess("--config", json.dumps({"verdict_override": True}), "--alias", "tiny-llava",
                           log_dir=tmp_path_factory.mktemp("browser-server"))
    yield server
    assert server.stop() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM
    assert "Traceback" not in server.log(), server.log()


def test_demo_page_upload_ask_and_see_what_ecso_did(unsafe_server: ServerProcess, tiny_model: ecso_edge.Model,
                                                   tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's `chromium` in .ci/run)")
    from playwright.sync_api import sync_playwright

    pixels = demo_picture()
    picture = tmp_path / "picture.png"
    picture.write_bytes(png_bytes(pixels))
    expected = Session(tiny_model, EcsoConfig(verdict_override=True)).run(pixels, QUERY, max_tokens=MAX_TOKENS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 900})
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(unsafe_server.url + "/")
            assert page.text_content("#model-name") == "tiny-llava"
            page.set_input_files("#image", str(picture))
            page.wait_for_function("document.getElementById('preview').src.startsWith('data:image/png')")
            page.fill("#question", QUERY)
            page.fill("#max-tokens", str(MAX_TOKENS))
            page.click("#submit")
            page.wait_for_function(
                "['done', 'failed'].some(s => document.getElementById('status').textContent.startsWith(s))",
                timeout=60_000,
            )
            assert page.text_content("#error") == ""
            assert page.text_content("#status", timeout=1000).startswith("done")  # type: ignore[union-attr]
            assert page.text_content("#answer") == expected.answer
            assert page.text_content("#verdict") == "unsafe: answered with eyes closed (forced by the server's verdict_override)"
            assert page.text_content("#first-answer") == expected.initial_answer
            assert page.text_content("#verdict-text") == expected.verdict_text
            assert page.text_content("#caption") == expected.caption
            stats = page.text_content("#stats") or ""
            assert "image encodes 1" in stats and f"tokens reused {expected.stats['tokens_reused']}" in stats
            assert page.locator("#steps tr").count() == 1 + len(expected.steps)
            assert page_errors == []
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            keep = os.environ.get("ECSO_DEMO_SCREENSHOT")
            if keep:
                shutil.copyfile(shot, keep)
        finally:
            browser.close()
