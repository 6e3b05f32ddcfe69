"""Loading a model pair in a child process, for tests of damaged files: if the validator misses a
defect, mtmd may crash the process, and that must fail one test, not kill pytest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ecso_edge

PROJECTOR = re.escape("projector (mmproj) '")
TEXT_MODEL = re.escape("text model '")


def quoted(path: Path) -> str:
    """A pattern for the message naming `path`."""
    return re.escape(f"'{path}'")


_LOAD_SCRIPT = """
import json, sys
import ecso_edge
try:
    ecso_edge.Model(sys.argv[1], sys.argv[2], n_threads=1, n_ctx=256)
except ecso_edge.EcsoError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
else:
    print(json.dumps({"error": None}))
"""


def load_isolated(text: Path, mmproj: Path, **env: str) -> None:
    """Load the pair in a child process; re-raise its EcsoError here. A crash fails the test."""
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(text), str(mmproj)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=text.parent,
        env={**os.environ, "OMP_WAIT_POLICY": "passive", **env},
    )
    if proc.returncode < 0:
        pytest.fail(
            f"loading crashed the process with {signal.Signals(-proc.returncode).name}: the validator let "
            f"a bad file through to llama.cpp/mtmd\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    if outcome["error"] is not None:
        raise getattr(ecso_edge, outcome["error"])(outcome["message"])
