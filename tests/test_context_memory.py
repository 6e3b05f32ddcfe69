"""Contexts that do not fit the memory there is: a context llama.cpp cannot allocate (a session's,
a parallel session's lanes together, a judge model's) is a ResourceError, also a MemoryError, that
names the n_ctx and parallel asked for and what to lower; the CLI and the server show it as one
line. llama.cpp's own allocation failure is made real, on any machine, in a child process whose
address space is capped a little above what it holds once the model is loaded (RLIMIT_AS): the
1 GiB KV cache of the tiny pair's 2^21 cells cannot be allocated, and 128 MiB still can."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ecso_edge
from ecso_edge import ResourceError

ENV = dict(os.environ, OMP_WAIT_POLICY="passive")
LOG = r" \(llama\.cpp: .*failed to allocate buffer for kv cache\)"  # llama.cpp's own lines, in the message

# Runs the Python source in argv[1] with ecso_edge's tiny pair loaded as `model` (the options in
# argv[2], JSON) and the address space then capped 384 MiB above what the process holds; prints
# what the source left in `outcome`, or the class and message of the EcsoError it raised.
_CAPPED = """
import json, resource, sys
import ecso_edge
text, mmproj = ecso_edge.tiny_pair()
options = json.loads(sys.argv[2])
model = ecso_edge.Model(text, mmproj, n_threads=1, **options)
with open("/proc/self/statm") as f:
    held = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (held + (384 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
outcome = {}
try:
    exec(sys.argv[1])
except ecso_edge.EcsoError as e:
    outcome.update(error=type(e).__name__, message=str(e), is_memory_error=isinstance(e, MemoryError))
print(json.dumps(outcome))
"""


def capped(source: str, **options: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _CAPPED, source, json.dumps(options)], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return outcome


def test_resource_error_is_an_ecso_error_and_a_memory_error() -> None:
    assert issubclass(ResourceError, ecso_edge.EcsoError) and issubclass(ResourceError, MemoryError)
    assert ecso_edge.errors.ResourceError is ResourceError and "ResourceError" in ecso_edge.__all__


def test_a_session_context_that_cannot_be_allocated_names_n_ctx() -> None:
    # used to be the base EcsoError ("could not create a context of 2097152 tokens")
    out = capped("ecso_edge.Session(model)", n_ctx=2**21)
    assert out["error"] == "ResourceError" and out["is_memory_error"]
    assert_matches(out["message"], r"llama\.cpp could not create the session's context for n_ctx 2097152 and "
                   r"parallel 1" + LOG + r"\. Lower n_ctx or free memory")


def test_a_parallel_sessions_lanes_that_cannot_be_allocated_name_n_ctx_and_parallel_and_leave_the_model() -> None:
    # 32 lanes of 2^16 cells are the 1 GiB that cannot be had; one lane's 32 MiB then still runs
    source = """
import numpy as np
try:
    ecso_edge.Session(model, parallel=32)
finally:
    r = ecso_edge.Session(model, ecso_edge.EcsoConfig(verdict_override=True)).run(
        np.zeros((16, 16, 3), np.uint8), "What is this?", max_tokens=2)
    outcome["steps_after"] = [s.name for s in r.steps]
"""
    out = capped(source, n_ctx=2**16)
    assert out["error"] == "ResourceError"
    assert_matches(out["message"], r"llama\.cpp could not create the session's context for n_ctx 65536 and "
                   r"parallel 32, 2097152 cells in all" + LOG + r"\. Lower n_ctx or parallel, or free memory")
    assert out["steps_after"] == ["answer", "judge", "caption", "text_only"]


def test_a_judge_models_context_that_cannot_be_allocated_names_the_judge_models_n_ctx() -> None:
    source = """
judge = ecso_edge.TextModel(text, n_ctx=2**21, n_threads=1)
ecso_edge.Session(model, judge_model=judge, judge_format="yes-no")
"""
    out = capped(source, n_ctx=256)
    assert out["error"] == "ResourceError"
    assert_matches(out["message"], r"llama\.cpp could not create the judge model's context for its n_ctx 2097152" +
                   LOG + r"\. Lower the judge model's n_ctx or free memory")


def test_with_layers_to_offload_the_message_says_to_offload_fewer() -> None:
    if ecso_edge.system_info()["gpu_offload"]:
        pytest.skip("with a GPU the cache goes to its memory, which the address-space cap does not bound")
    out = capped("ecso_edge.Session(model)", n_ctx=2**21, n_gpu_layers=-1)
    assert_matches(out["message"], r"llama\.cpp could not create the session's context for n_ctx 2097152 and "
                   r"parallel 1" + LOG + r"\. Lower n_ctx, offload fewer layers \(n_gpu_layers\) or free memory")


def test_serve_reports_a_context_it_cannot_make_at_startup_as_one_line_and_exit_1(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    source = """
import ecso_edge.server, uvicorn  # held before the cap, as the server's own imports are
from ecso_edge.cli import main
outcome["exit"] = main(["serve", "--tiny", "--n-ctx", "2097152", "--threads", "1", "--port", "1"])
"""
    proc = subprocess.run([sys.executable, "-c", _CAPPED, source, json.dumps({"n_ctx": 256})],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"exit": 1}
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert_matches(proc.stderr, r"ecso-edge: error: llama\.cpp could not create the session's context for "
                   r"n_ctx 2097152 and parallel 1" + LOG + r"\. Lower n_ctx or free memory\n")


def assert_matches(text: str, pattern: str) -> None:
    assert re.fullmatch(pattern, text, re.DOTALL), text
