"""Test helpers for `ecso-edge serve`: a real server process on a free loopback port (the CLI
itself, on the shipped tiny pair, one thread), its /health report and waits on it, and request
bodies with an inline PNG image."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

N_CTX = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def chat_body(image_url: str, query: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": query},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}],
        **fields,
    }


class ServerProcess:
    """`python -m ecso_edge.cli serve ...` in a subprocess; `stop()` ends it and returns its exit code."""

    def __init__(self, *args: str, log_dir: Path, n_ctx: int = N_CTX) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecso_edge.cli", "serve", "--port", str(self.port), "--threads", "1",
             "--n-ctx", str(n_ctx), "--log-level", "warning", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_WAIT_POLICY="passive"),
        )
        self._wait_until_up()

    def _wait_until_up(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /health in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        return dict(json.load(r))


def wait_for(server: ServerProcess, condition: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    """/health's report once `condition(report)` holds."""
    deadline = time.monotonic() + timeout_s  # a bound on a hang, not a synchronisation
    while True:
        h = health(server)
        if condition(h):
            return h
        assert time.monotonic() < deadline, f"server state never matched: {h}\n{server.log()}"
        time.sleep(0.05)


def serving(log_dir: Path, *args: str) -> Iterator["ServerProcess"]:
    """A fixture's body: `ecso-edge serve *args` for the fixture's life, then stopped and checked
    (it stayed up, stopped cleanly, logged no traceback)."""
    import signal

    server = ServerProcess(*args, log_dir=log_dir)
    try:
        yield server
    finally:
        assert server.alive(), server.log()
        assert server.stop() in (0, -signal.SIGTERM), server.log()
        assert "Traceback" not in server.log(), server.log()

