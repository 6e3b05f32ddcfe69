"""Fault tests: the data engine killed with SIGKILL at random points and resumed (every record
exactly once), a full disk during output (a clear error, the records so far intact), cancel() and
Ctrl-C during each ECSO step (stopped at the next check point: no token after the cancel; the
time it took is reported, not asserted), a long request loop (no memory or handle
growth) and the C++ self-test under AddressSanitizer's leak checker.

Marked `fuzz`: a plain run does a short seeded subset (6 kills, 3 cancels per step, 300 requests);
`pytest -m fuzz` the full one (24 kills, 10 cancels per step, 1,000 requests, the ASan build).
Figures go to ECSO_FUZZ_ARTIFACTS/faults-*.json when that variable is set (docs/robustness.md).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
from PIL import Image

import ecso_edge
from ecso_edge import CancelledError, EcsoConfig, Session
from ecso_edge.data_engine import trace_path_for
from step_gate import SIGINT_PRELUDE, StepGate

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("ECSO_FUZZ_SEED", "20251123"))
ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


def full_run(config: pytest.Config) -> bool:
    return "fuzz" in (config.getoption("markexpr") or "") or os.environ.get("ECSO_FUZZ_FULL") == "1"


def report(name: str, figures: dict[str, Any]) -> None:
    """Prints the figures and keeps them in ECSO_FUZZ_ARTIFACTS for docs/robustness.md."""
    print(f"\n{name}: {json.dumps(figures)}")
    where = os.environ.get("ECSO_FUZZ_ARTIFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"faults-{name}.json").write_text(json.dumps(figures, indent=1))


# --------------------------------------------------------------------------------------------
# The data engine: kill -9 and a full disk


def make_dataset(root: Path, n: int) -> tuple[Path, list[str]]:
    """n records with small PNGs plus one broken image; returns the JSONL and the ids in order."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    ids = []
    lines = []
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 7 * i % 256, np.uint8)).save(root / "imgs" / f"{i}.png")
        ids.append(f"r{i}")
        lines.append({"id": f"r{i}", "image": f"{i}.png", "query": f"What is in picture {i}? é 日本"})
    (root / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    lines.insert(n // 2, {"id": "bad", "image": "broken.png", "query": "And this?"})
    ids.insert(n // 2, "bad")
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path, ids


def engine_cmd(data: Path, out: Path, max_tokens: int = 48) -> list[str]:
    return [sys.executable, "-m", "ecso_edge.cli", "data-engine", "--input", str(data), "--image-root",
            str(data.parent / "imgs"), "--out", str(out), "--max-tokens", str(max_tokens), "--threads", "1",
            "--n-ctx", "512"]


def whole_lines(trace: Path) -> list[dict[str, Any]]:
    """The trace's complete lines, each of which must parse (a killed run may leave half a last line)."""
    if not trace.exists():
        return []
    data = trace.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines()]


def assert_exactly_once(out: Path, ids: list[str]) -> None:
    traced = [e["id"] for e in whole_lines(trace_path_for(out))]
    assert collections.Counter(traced) == collections.Counter(ids), "trace ids differ from the input's"
    assert traced == ids  # resumed runs keep the input order
    sft = json.loads(out.read_text(encoding="utf-8"))
    assert [e["id"] for e in sft] == [i for i in ids if i != "bad"]


def test_kill_9_at_random_points_then_resume_gives_every_record_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    n_kills = 24 if full_run(request.config) else 6
    data, ids = make_dataset(tmp_path, 40)
    # an uninterrupted run: the reference output, and how long a whole run takes here
    reference = tmp_path / "reference.json"
    t_start = time.perf_counter()
    ok = subprocess.run(engine_cmd(data, reference), env=ENV, capture_output=True, timeout=300)
    whole_run_s = time.perf_counter() - t_start
    assert ok.returncode == 0, ok.stderr.decode()[-2000:]
    rng = random.Random(SEED)
    kills = completed = outputs = 0
    lines_at_kill: list[int] = []
    while kills < n_kills:
        outputs += 1
        out = tmp_path / f"sft-{outputs}.json"
        resume = False
        while True:
            proc = subprocess.Popen(engine_cmd(data, out) + (["--resume"] if resume else []), env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            resume = True
            # anywhere from before the model is loaded to the end of the records
            delay = rng.uniform(0.02, whole_run_s)
            try:
                _, err = proc.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                kills += 1
                lines_at_kill.append(len(whole_lines(trace_path_for(out))))  # parses, or fails here
                if kills >= n_kills:
                    break
                continue
            assert proc.returncode == 0, err.decode()[-2000:]
            completed += 1
            break
        # finish the output the kills interrupted, then check it
        done = subprocess.run(engine_cmd(data, out) + ["--resume"], env=ENV, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert_exactly_once(out, ids)
        assert out.read_bytes() == reference.read_bytes()  # as if it had never been interrupted
    report("kill9", {"kills": kills, "outputs": outputs, "runs_finished_before_their_kill": completed,
                     "whole_run_s": round(whole_run_s, 2),
                     "trace_lines_at_kills": lines_at_kill, "records_lost": 0, "records_duplicated": 0,
                     "seconds": round(time.perf_counter() - t_start, 1), "seed": SEED})


def with_file_size_limit(limit: int, cmd: list[str]) -> list[str]:
    """`cmd` run with RLIMIT_FSIZE: writes past `limit` bytes fail with EFBIG, as on a full disk,
    with no root needed (SIGXFSZ, which would kill the process instead, is ignored). A small exec
    wrapper rather than preexec_fn, which is unsafe in a process with threads (llama.cpp's)."""
    wrapper = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", wrapper, *cmd]


def test_full_disk_stops_with_a_clear_error_and_keeps_the_records(tmp_path: Path) -> None:
    data, ids = make_dataset(tmp_path, 8)
    reference = tmp_path / "reference.json"
    ok = subprocess.run(engine_cmd(data, reference, 8), env=ENV, capture_output=True, timeout=300)
    assert ok.returncode == 0, ok.stderr.decode()
    sizes = [len(line) for line in trace_path_for(reference).read_bytes().splitlines(keepends=True)]
    limit = sum(sizes[:3]) + sizes[3] // 2  # room for three records and half of the fourth

    out = tmp_path / "sft.json"
    trace = trace_path_for(out)
    full = subprocess.run(with_file_size_limit(limit, engine_cmd(data, out, 8)), env=ENV, capture_output=True,
                          timeout=300)
    stderr = full.stderr.decode()
    assert full.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"ecso-edge: error: cannot write the trace '{trace}': File too large. The 3 records traced before " \
           "are intact; free some space and rerun with --resume" in stderr
    # the partial fourth line was cut off: the trace is exactly the first three records
    assert trace.read_bytes().endswith(b"\n")
    assert [e["id"] for e in whole_lines(trace)] == ids[:3]
    assert not out.exists()
    again = subprocess.run(engine_cmd(data, out, 8) + ["--resume"], env=ENV, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert_exactly_once(out, ids)
    assert out.read_bytes() == reference.read_bytes()


def test_full_tmpfs_stops_with_no_space_left_and_keeps_the_records(tmp_path: Path) -> None:
    # the real ENOSPC of a full file system, where root may mount a small tmpfs (skipped otherwise)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; the RLIMIT_FSIZE test covers the rootless case")
    data, ids = make_dataset(tmp_path / "data", 30)
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        out = disk / "sft.json"
        full = subprocess.run(engine_cmd(data, out, 8), env=ENV, capture_output=True, timeout=300)
        stderr = full.stderr.decode()
        assert full.returncode == 1 and "Traceback" not in stderr, stderr
        m = re.search(rf"ecso-edge: error: cannot write the trace '{re.escape(str(trace_path_for(out)))}': "
                      r"No space left on device. The (\d+) records traced before are intact", stderr)
        assert m, stderr
        kept = whole_lines(trace_path_for(out))
        assert [e["id"] for e in kept] == ids[: int(m.group(1))] and trace_path_for(out).read_bytes().endswith(b"\n")
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        again = subprocess.run(engine_cmd(data, out, 8) + ["--resume"], env=ENV, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()
        assert_exactly_once(out, ids)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_sft_write_failure_keeps_the_previous_file_and_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from ecso_edge import OutputError, data_engine

    trace = tmp_path / "sft.trace.jsonl"
    trace.write_text(json.dumps({"id": "a", "image": "a.png", "query": "q", "answer": "x"}) + "\n")
    out = tmp_path / "sft.json"
    out.write_text("[]")

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data_engine.json, "dump", no_space)
    with pytest.raises(OutputError, match=f"cannot write the SFT file '{out}': No space left on device. "
                       f"Every record is in the trace '{trace}'"):
        data_engine.write_sft(trace, out)
    assert out.read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.json", "sft.trace.jsonl"]  # no temp file left


# --------------------------------------------------------------------------------------------
# cancel() and Ctrl-C during each step

# per step: the config that makes that step the long one (the others generate 1 token)
STEP_CONFIGS: dict[str, dict[str, Any]] = {
    "answer": dict(ignore_eos=True, verdict_override=True),
    "judge": dict(ignore_eos=True, max_tokens_answer=1, max_tokens_judge=100000),
    "caption": dict(ignore_eos=True, verdict_override=True, max_tokens_answer=1, max_tokens_judge=1),
    "text_only": dict(ignore_eos=True, verdict_override=True, max_tokens_answer=1, max_tokens_judge=1,
                      max_tokens_caption=1),
}


@pytest.fixture(scope="module")
def long_model(tiny_paths: tuple[Path, Path]) -> ecso_edge.Model:
    return ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=4096)


def cancel_latency(session: Session, image: np.ndarray, step: str) -> tuple[float, str, int]:
    return cancel_latency_of(
        lambda gate, token: session.run(image, "Describe the picture.", max_tokens=100000, on_progress=gate,
                                        cancel=token),
        session, step, "generate")


@pytest.mark.parametrize("step", list(STEP_CONFIGS))
def test_cancel_during_each_step_stops_before_another_token(
    request: pytest.FixtureRequest, long_model: ecso_edge.Model, image: np.ndarray, step: str
) -> None:
    session = Session(long_model, EcsoConfig(**STEP_CONFIGS[step]))
    reps = 10 if full_run(request.config) else 3
    latencies = []
    for _ in range(reps):
        latency, message, tokens_after = cancel_latency(session, image, step)
        assert re.fullmatch(f"cancelled during (generation of )?step '{step}'", message), message
        assert tokens_after == 0, f"{tokens_after} tokens after the cancel"
        latencies.append(latency)
    report(f"cancel-{step}", {"reps": reps, "max_ms": round(max(latencies) * 1000, 2),
                              "median_ms": round(statistics.median(latencies) * 1000, 2)})
    assert len(session.run(image, "Describe.", max_tokens=2).steps) in (2, 4)  # usable afterwards


_SIGINT_CHILD = SIGINT_PRELUDE + """
import json, sys, time, numpy as np, ecso_edge
sys.path.insert(0, sys.argv[4])
from step_gate import StepGate
configs = json.loads(sys.argv[3])
m = ecso_edge.Model(sys.argv[1], sys.argv[2], n_threads=1, n_ctx=4096)
img = np.zeros((32, 32, 3), np.uint8)
for name, cfg in configs.items():
    s = ecso_edge.Session(m, ecso_edge.EcsoConfig(**cfg))
    token = ecso_edge.CancelToken()
    # held inside the step this case targets until the signal's cancel reaches the token
    gate = StepGate(token, name.split("#")[0], on_reached=lambda: print("in", name, flush=True))
    try:
        s.run(img, "describe", max_tokens=1000000, on_progress=gate, cancel=token)
        print("finished", name, flush=True)
    except KeyboardInterrupt:
        print("interrupted", name, time.perf_counter(), gate.after_release, flush=True)
"""


def test_ctrl_c_during_each_step_stops_before_another_token(request: pytest.FixtureRequest,
                                                     tiny_paths: tuple[Path, Path]) -> None:
    reps = 5 if full_run(request.config) else 1
    steps = {f"{step}#{k}": cfg for k in range(reps) for step, cfg in STEP_CONFIGS.items()}
    proc = subprocess.Popen([sys.executable, "-c", _SIGINT_CHILD, *map(str, tiny_paths), json.dumps(steps),
                             str(Path(__file__).resolve().parent)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for name in steps:
            assert proc.stdout.readline().split() == ["in", name]
            sent = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            word, step, stopped, tokens_after = proc.stdout.readline().split()
            assert (word, step, tokens_after) == ("interrupted", name, "0")
            latencies[name.split("#")[0]].append(float(stopped) - sent)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    report("sigint", {s: {"reps": len(v), "max_ms": round(max(v) * 1000, 2)} for s, v in latencies.items()})



# --------------------------------------------------------------------------------------------
# Memory and handles over a long request loop

_LOOP_CHILD = """
import json, os, sys, numpy as np, ecso_edge

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

n, warm = int(sys.argv[3]), int(sys.argv[4])
m = ecso_edge.Model(sys.argv[1], sys.argv[2], n_threads=1, n_ctx=1024)
sessions = [ecso_edge.Session(m, ecso_edge.EcsoConfig(verdict_override=v)) for v in (False, True)]
rng = np.random.default_rng(0)
samples = {}
for i in range(n):
    img = rng.integers(0, 256, size=(int(rng.integers(8, 64)), int(rng.integers(8, 64)), 3), dtype=np.uint8)
    s = sessions[i % 2]
    if i % 3 == 2:
        s.answer(img, "What is this?", max_tokens=6)
    else:
        s.run(img, "What is this?", max_tokens=6)
    if i + 1 == warm or (i + 1) % 100 == 0:
        samples[i + 1] = {"rss_kb": rss_kb(), "fds": len(os.listdir("/proc/self/fd")),
                          "threads": len(os.listdir("/proc/self/task"))}
print(json.dumps(samples))
"""


def test_request_loop_does_not_grow_memory_or_handles(request: pytest.FixtureRequest,
                                                      tiny_paths: tuple[Path, Path]) -> None:
    n, warm = (1000, 100) if full_run(request.config) else (300, 100)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LOOP_CHILD, *map(str, tiny_paths), str(n), str(warm)],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    base, end = samples[warm], samples[n]
    growth = (end["rss_kb"] - base["rss_kb"]) / base["rss_kb"]
    report("memory", {"requests": n, "warm_up": warm, "rss_kb_after_warm_up": base["rss_kb"],
                      "rss_kb_end": end["rss_kb"], "growth_pct": round(growth * 100, 2),
                      "fds": [base["fds"], end["fds"]], "threads": [base["threads"], end["threads"]],
                      "seconds": round(time.perf_counter() - t0, 1)})
    assert growth <= 0.05, samples
    assert end["fds"] == base["fds"] and end["threads"] == base["threads"], samples


# --------------------------------------------------------------------------------------------
# The C++ self-test under AddressSanitizer (valgrind cannot run this build: see docs/robustness.md)

def _llama_cmake_dir() -> Optional[Path]:
    import sysconfig

    path = Path(sysconfig.get_paths()["purelib"]) / "lib" / "cmake" / "llama"
    return path if path.is_dir() else None


def test_selftest_under_address_sanitizer_is_clean(request: pytest.FixtureRequest, tmp_path: Path,
                                                   tiny_paths: tuple[Path, Path]) -> None:
    if not full_run(request.config):
        pytest.skip("builds the C++ core with -fsanitize=address (about 30 s): runs under `pytest -m fuzz`")
    cmake, llama_dir = shutil.which("cmake"), _llama_cmake_dir()
    if cmake is None or llama_dir is None:
        pytest.skip("needs cmake and llama-cpp-python's CMake config")
    source = Path(__file__).resolve().parent.parent
    if not (source / "csrc" / "tests" / "selftest.cpp").is_file():
        pytest.skip("needs the source tree")
    flags = "-fsanitize=address -fno-omit-frame-pointer -O1 -g"
    build = tmp_path / "asan"
    subprocess.run([cmake, "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug", f"-Dllama_DIR={llama_dir}",
                    f"-Dggml_DIR={llama_dir.parent / 'ggml'}", f"-DCMAKE_CXX_FLAGS={flags}",
                    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address"], check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "--target", "ecso_selftest", "-j2"], check=True, capture_output=True)
    # no suppressions: the run is clean as it is, libgomp and ld.so included
    env = dict(ENV, ASAN_OPTIONS="detect_leaks=1:exitcode=99")
    t0 = time.perf_counter()
    run = subprocess.run([str(build / "ecso-selftest"), *map(str, tiny_paths)], capture_output=True, text=True,
                         env=env, timeout=600)
    report("asan", {"returncode": run.returncode, "seconds": round(time.perf_counter() - t0, 1),
                    "summary": re.findall(r"^\d+ passed, \d+ failed$", run.stdout, re.M),
                    "sanitizer_reports": run.stderr.count("ERROR: AddressSanitizer")
                    + run.stderr.count("ERROR: LeakSanitizer")})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "ERROR:" not in run.stderr, run.stderr[-4000:]


@pytest.mark.smollm
def test_cancel_during_the_image_encoder_stops_at_its_next_check_point(smollm_clip_pair: tuple[Path, Path]) -> None:
    # mtmd's encoder has no abort callback: without the scheduler eval callback (Model), a cancel
    # waited for the whole encode (measured up to 424 ms for this CLIP-B/16; seconds for CLIP-L/336)
    model = ecso_edge.Model(*smollm_clip_pair, n_threads=1, n_threads_batch=2, n_ctx=1024)
    session = Session(model, EcsoConfig(system_prompt=""))  # a short head: the encode starts at once
    rng = np.random.default_rng(SEED)
    warm = session.answer(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "What is this?", max_tokens=1)
    encode_s = warm.steps[0].stats["encode_seconds"]
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    latencies = []
    for nodes in (32, 96, 160):  # held inside the encoder after this many graph nodes
        latency, message, check_points_after = cancel_latency_of(
            lambda gate, token: session.answer(image, "What is this?", max_tokens=1, on_progress=gate, cancel=token),
            session, "answer", "encode", at=nodes)
        assert message == "cancelled during step 'answer'", message
        # the encoder looks at the token every 32 graph nodes: it stops at the first look after
        assert check_points_after <= 1, check_points_after
        latencies.append(latency)
    report("cancel-encode", {"encode_s": round(encode_s, 3), "max_ms": round(max(latencies) * 1000, 2)})
    # the stopped encode left nothing behind: the next request encodes afresh and matches a new session
    after = session.answer(image, "What is this?", max_tokens=4)
    fresh = Session(model, EcsoConfig(system_prompt="")).answer(image, "What is this?", max_tokens=4)
    assert after.steps[0].tokens == fresh.steps[0].tokens
    assert after.stats["image_encodes"] == 1


def cancel_latency_of(call: Callable[[StepGate, ecso_edge.CancelToken], object], session: Session, step: str,
                      phase: str, at: int = 1) -> tuple[float, str, int]:
    """Runs `call` held at (step, phase) by a StepGate; another thread then calls session.cancel().
    Returns the time from that cancel to the CancelledError, the error's message, and the progress
    the call reported at (step, phase) after the gate let it go."""
    token = ecso_edge.CancelToken()
    gate = StepGate(token, step, phase, at)
    fired: list[float] = []

    def cancel_when_there() -> None:
        gate.reached.wait()
        fired.append(time.perf_counter())
        session.cancel()

    t = threading.Thread(target=cancel_when_there)
    t.start()
    try:
        call(gate, token)
    except CancelledError as e:
        stopped, message = time.perf_counter(), str(e)
    else:
        stopped, message = float("nan"), "not cancelled: the call finished first"
        token.cancel()  # release the canceller thread
        gate.reached.set()
    t.join()
    return stopped - fired[0], message, gate.after_release
