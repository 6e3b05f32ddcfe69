"""Parent side of the fuzz suite: a persistent worker process (fuzz_worker.py) that executes cases
one by one, the bookkeeping of outcomes, and the reproducers of findings.

Each case runs in the worker, never in pytest. When the worker dies during a case, the case is a
crash (with its signal or exit status); when it does not answer within the time limit, it is
killed and the case is a hang. Either way a fresh worker takes the next case, and the case is
replayed once in that fresh worker to tell a reproducible crash from damage left by an earlier
case. Every outcome is one of: ok, a typed EcsoError (by class), crash, hang, another exception
class, a broken invariant; all but the first two are findings.

Budgets and seeds (see docs/robustness.md):
    ECSO_FUZZ_CASES    cases per fuzz target (tests/test_fuzz.py::BUDGETS: 5,000/5,000/4,000 GGUF/image/prompt
                       cases under `-m fuzz`, 300/400/300 otherwise; options: the whole sweep + 1,000, or 300 + 150;
                       state files: 600, or 20)
    ECSO_FUZZ_SEED     the hypothesis seed (default 20251123)
    ECSO_FUZZ_ARTIFACTS where reports and reproducers go (default: pytest's temporary directory)
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import fuzz_worker

WORKER = Path(fuzz_worker.__file__).resolve()
CASE_TIMEOUT_S = 60.0  # a loaded 2-core CI machine: generous; a tiny-model case takes well under a second
START_TIMEOUT_S = 120.0
FINDINGS = ("crash", "hang", "exception", "violation")


@dataclass
class Outcome:
    status: str  # ok | error | crash | hang | exception | violation
    type: str = ""  # the EcsoError or exception class; the signal of a crash
    message: str = ""
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.status}:{self.type}" if self.type else self.status


class Worker:
    """One fuzz_worker.py child; restarted after it crashes or hangs."""

    def __init__(self, log: Path, timeout: float = CASE_TIMEOUT_S) -> None:
        self.log = log
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.restarts = 0
        self._log_start = 0

    def start(self) -> None:
        env = dict(os.environ, OMP_WAIT_POLICY="passive", PYTHONFAULTHANDLER="1", GGML_NO_BACKTRACE="1")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,  # a Ctrl-C at the terminal goes to pytest, not into a case
            )
        ready = self._read(START_TIMEOUT_S)
        if not isinstance(ready, dict) or ready.get("status") != "ready":
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc = None

    def run(self, case: dict[str, Any]) -> Outcome:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        data = pickle.dumps(case, protocol=pickle.HIGHEST_PROTOCOL)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0  # this case's part of the log
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            reply = self._read(self.timeout)
        except BrokenPipeError:
            reply = None
        except TimeoutError:
            self.stop()
            self.restarts += 1
            return Outcome("hang", "", f"no answer within {self.timeout:.0f} s", time.perf_counter() - t0)
        if reply is None:  # the worker died during the case
            code = self.proc.wait()
            self.stop()
            self.restarts += 1
            what = signal.Signals(-code).name if code < 0 else f"exit {code}"
            return Outcome("crash", what, self._log_tail(), time.perf_counter() - t0)
        return Outcome(reply["status"], reply.get("type", ""), reply.get("message", ""), reply.get("seconds", 0.0))

    def _read(self, timeout: float) -> Optional[Any]:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        deadline = time.monotonic() + timeout
        chunks = b""
        need = 4
        header_done = False
        while len(chunks) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([stream], [], [], left)
            if not ready:
                raise TimeoutError
            piece = os.read(stream.fileno(), need - len(chunks))
            if not piece:
                return None
            chunks += piece
            if not header_done and len(chunks) == 4:
                (n,) = struct.unpack(">I", chunks)
                need, chunks, header_done = n, b"", True
        return pickle.loads(chunks)

    def _log_tail(self) -> str:
        try:
            return self.log.read_bytes()[self._log_start:][-3000:].decode("utf-8", "replace")
        except OSError:
            return ""


@dataclass
class Campaign:
    """The cases of one fuzz target: counts per outcome, findings with reproducers, a JSON report."""

    name: str
    artifacts: Path
    worker: Worker
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    slowest: float = 0.0
    skipped: list[str] = field(default_factory=list)  # generated cases that could not be written

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())

    def run(self, case: dict[str, Any], files: tuple[Path, ...] = ()) -> Outcome:
        """Runs one case; `files` are paths the case reads (copied into a finding's reproducer)."""
        t0 = time.perf_counter()
        outcome = self.worker.run(case)
        elapsed = time.perf_counter() - t0
        self.seconds += elapsed
        self.slowest = max(self.slowest, elapsed)
        self.outcomes[outcome.label] += 1
        if outcome.status in FINDINGS:
            self._record(case, files, outcome)
        return outcome

    def _record(self, case: dict[str, Any], files: tuple[Path, ...], outcome: Outcome) -> None:
        where = self.artifacts / self.name / f"finding-{len(self.findings) + 1:04d}"
        where.mkdir(parents=True, exist_ok=True)
        saved = dict(case)
        for key, value in case.items():
            if isinstance(value, str) and Path(value) in files:
                copy = where / Path(value).name
                shutil.copyfile(value, copy)
                saved[key] = str(copy)
        (where / "case.pkl").write_bytes(pickle.dumps(saved, protocol=pickle.HIGHEST_PROTOCOL))
        reproduced = None
        if outcome.status in ("crash", "hang"):
            # replay in a fresh worker: is it this case, or damage left behind by an earlier one?
            again = self.worker.run(saved)
            reproduced = again.status == outcome.status
        finding = {"outcome": outcome.label, "message": outcome.message[-2000:], "reproduced": reproduced,
                   "case": _describe(case), "reproducer": str(where / "case.pkl"),
                   "replay": f"python {WORKER} --replay {where / 'case.pkl'}"}
        (where / "finding.json").write_text(json.dumps(finding, indent=1))
        self.findings.append(finding)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "cases": self.cases,
            "outcomes": dict(sorted(self.outcomes.items())),
            "crashes": sum(n for k, n in self.outcomes.items() if k.startswith("crash")),
            "hangs": self.outcomes.get("hang", 0),
            "other_exceptions": sum(n for k, n in self.outcomes.items() if k.startswith("exception")),
            "violations": sum(n for k, n in self.outcomes.items() if k.startswith("violation")),
            "worker_restarts": self.worker.restarts,
            "skipped_unwritable": len(self.skipped),
            "seconds": round(self.seconds, 1),
            "slowest_case_s": round(self.slowest, 2),
            "findings": self.findings,
        }

    def write_report(self) -> Path:
        path = self.artifacts / f"fuzz-{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=1))
        return path

    def failure_message(self) -> str:
        lines = [f"{len(self.findings)} finding(s) in {self.cases} {self.name} cases; report {self.write_report()}"]
        for f in self.findings[:10]:
            lines.append(f"- {f['outcome']} (reproduced: {f['reproduced']}): {f['case']}\n  {f['replay']}\n"
                         f"  {f['message'][-600:]}")
        return "\n".join(lines)


def _describe(case: dict[str, Any]) -> str:
    """A short, readable account of a case (the pickle holds the exact bytes)."""
    shown = {}
    for key, value in case.items():
        if isinstance(value, (bytes, bytearray)):
            shown[key] = f"<{len(value)} bytes: {bytes(value[:24])!r}...>"
        elif isinstance(value, str) and len(value) > 120:
            shown[key] = value[:120] + f"...<{len(value)} chars>"
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            shown[key] = f"<array {value.dtype} {value.shape}>"
        else:
            shown[key] = repr(value)[:300]
    return json.dumps(shown, ensure_ascii=True)


def budget(target: str, full: bool, defaults: dict[str, tuple[int, int]]) -> int:
    """Cases for `target`: ECSO_FUZZ_CASES if set, else the full or the CI default."""
    env = os.environ.get("ECSO_FUZZ_CASES")
    if env:
        return int(env)
    ci, full_n = defaults[target]
    return full_n if full else ci


def seed() -> int:
    return int(os.environ.get("ECSO_FUZZ_SEED", "20251123"))
