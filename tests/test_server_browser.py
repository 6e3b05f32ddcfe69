"""The demo page of `ecso-edge serve` in headless Chromium (Debian's `chromium`, driven by
Playwright without its own browser download): a chat of two turns, an image attached to the
first; each streamed answer and its details panel equal what the in-process Session.chat computes,
and the second turn reuses the first's cells. Set ECSO_DEMO_SCREENSHOT to a
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
FOLLOW_UP = "Tell me more about it."
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
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    conversation = [{"role": "user", "content": [{"type": "image", "image": pixels},
                                                 {"type": "text", "text": QUERY}]}]
    first = session.chat(conversation, max_tokens=MAX_TOKENS)
    conversation += [{"role": "assistant", "content": first.answer}, {"role": "user", "content": FOLLOW_UP}]
    second = session.chat(conversation, max_tokens=MAX_TOKENS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 1100})
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(unsafe_server.url + "/")
            assert page.text_content("#model-name") == "tiny-llava"
            page.fill("#max-tokens", str(MAX_TOKENS))
            page.set_input_files("#image", str(picture))
            page.wait_for_function("document.querySelectorAll('#attached img').length === 1")
            for turn, (text, expected) in enumerate([(QUERY, first), (FOLLOW_UP, second)]):
                page.fill("#question", text)
                page.click("#submit")
                page.wait_for_function(
                    f"document.querySelectorAll('.turn.assistant details').length === {turn + 1} || "
                    "document.getElementById('status').textContent.startsWith('failed')",
                    timeout=60_000,
                )
                page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
                assert page.text_content("#error") == ""
                reply = page.locator(".turn.assistant").nth(turn)
                assert reply.locator(".answer").text_content() == expected.answer
                assert reply.locator(".badge").text_content() == (
                    "unsafe: answered with eyes closed (forced by the server's verdict_override)")
                assert reply.locator(".first-answer").text_content() == expected.initial_answer
                assert reply.locator(".verdict-text").text_content() == expected.verdict_text
                assert reply.locator(".captions").text_content() == f"image 1: {expected.captions[0]}"
                stats = reply.locator(".stats").text_content() or ""
                answer = expected.stats["steps"]["answer"]
                assert f"image encodes {expected.stats['image_encodes']}" in stats
                assert f"cached {answer['tokens_reused']} of {answer['prompt_tokens']} prompt tokens" in stats
                assert reply.locator(".steps tr").count() == 1 + len(expected.steps)
            assert page.locator(".turn.user img").count() == 1  # the image went with the first message only
            assert second.stats["image_encodes"] == 0 and second.stats["steps"]["answer"]["tokens_reused"] > 0
            assert page_errors == []
            page.locator(".turn.assistant summary").last.click()  # the screenshot shows a details panel
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            keep = os.environ.get("ECSO_DEMO_SCREENSHOT")
            if keep:
                shutil.copyfile(shot, keep)
        finally:
            browser.close()
