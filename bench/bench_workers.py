"""Contenders in processes of their own, driven over JSON lines. Each library (ecso-edge,
llama-cpp-python) runs in its own process so that neither slows the other (two OpenMP teams in one
process did: an idle team spins on a core the working one needs, 2.7x slower under
OMP_WAIT_POLICY=active, bench/RESULTS.md), and every process other than the one being timed is
stopped (SIGSTOP), so threads left spinning under OMP_WAIT_POLICY=active cannot take its cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


class Worker:
    """The parent's handle: `call(**command)` resumes the process, sends one command, reads its
    answer and stops the process again."""

    def __init__(self, script: Path, kind: str, argv: list[str]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", kind, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1, env=dict(os.environ))
        self._read()  # loaded
        self.pause()

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"the {self.kind} worker exited (status {self.proc.wait()}); its stderr is above")
        reply = json.loads(line)
        if "error" in reply:
            sys.exit(f"the {self.kind} worker failed: {reply['error']}")
        return reply["ok"]

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def call(self, **command: Any) -> Any:
        assert self.proc.stdin is not None
        self.resume()
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            return self._read()
        finally:
            self.pause()

    def close(self) -> None:
        self.resume()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve(load: Callable[[], dict[str, Callable[..., Any]]]) -> int:
    """The worker's side: `load()` returns the commands by name; each line read is one command
    ({"op": name, ...keyword arguments}), each answer one line. Library output that goes to
    stdout is sent to stderr, so the protocol's stream holds answers only."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        handlers = load()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which exits
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    out.write(json.dumps({"ok": "ready"}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            out.write(json.dumps({"ok": handlers[op](**command)}) + "\n")
        except Exception as e:  # noqa: BLE001
            out.write(json.dumps({"error": f"{op}: {type(e).__name__}: {e}"}) + "\n")
    return 0
