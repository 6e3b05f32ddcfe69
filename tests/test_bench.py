"""Smoke test of the benchmark on the tiny pair: it runs every contender in one process and writes
the JSON keys and the chart that the performance report relies on. (Speed targets are checked by
the benchmark itself on a real model, never by a timed test.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_on_the_tiny_pair_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ecso_bench.py"), "--tiny", "--quick", "--no-llama-server",
         "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_WAIT_POLICY="passive"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    for key in (
        "direct_s", "ecso_safe_s", "ecso_unsafe_s", "reference_safe_s", "reference_unsafe_s",
        "naive_safe_s", "naive_unsafe_s", "image_encodes", "tokens_identical", "peak_rss_mb", "config",
        "ecso_safe_continue_s", "ecso_safe_incremental_s", "ecso_unsafe_incremental_s", "ttft_s", "targets",
    ):
        assert key in data, key
    medians = {k.removesuffix("_s") for k, v in data.items() if k.endswith("_s") and isinstance(v, float)}
    assert set(data["ttft_s"]) == medians and set(data["direct_phases_s"]) == {"direct"}
    assert all(0 < data["ttft_s"][name] <= data[name + "_s"] for name in data["ttft_s"])
    # the incremental path streams after its first check, the paper's only after the judge
    assert data["ttft_s"]["ecso_safe_incremental"] < data["ecso_safe_incremental_s"]
    assert data["targets"]["ecso_safe_s / llama_server_safe_s"]["met"] is None  # not measured here
    assert "not measured" in data["llama_server"] and "llama_server_safe_s" not in data
    assert data["config"]["process_per_library"] is True
    assert data["config"]["omp_wait_policy"] == "passive"  # as the caller set it, not overridden
    assert data["tokens_identical"] is True
    assert data["image_encodes"]["ecso_safe"] == 1 and data["image_encodes"]["ecso_unsafe"] == 1
    assert data["image_encodes"]["reference_unsafe"] == 3 and data["image_encodes"]["naive_unsafe"] == 3
    assert data["config"]["tokens_per_step"] == {"answer": 64, "judge": 4, "caption": 48, "text_only": 64}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target" in proc.stdout and "tokens identical to the reference path: True" in proc.stdout


def test_decode_cost_measures_every_batch_size(tmp_path: Path) -> None:
    from ecso_edge import tiny_pair

    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "decode_cost.py"), "--model", str(tiny_pair()[0]), "--threads", "1",
         "--reps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_WAIT_POLICY="passive"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert sorted(int(k) for k in data["ms_per_call"]) == [1, 2, 3, 4, 8, 16, 32, 113]
    assert all(v > 0 for v in data["ms_per_call"].values()) and data["omp_wait_policy"] == "passive"


def test_conversation_benchmark_on_the_tiny_pair(tmp_path: Path) -> None:
    out = tmp_path / "conversation.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "conversation_bench.py"), "--tiny", "--turns", "3", "--reps", "1",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_WAIT_POLICY="passive"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["omp_wait_policy"] == "passive" and data["tokens_identical_with_and_without_reuse"] is True
    ours, reference, naive = (data["per_turn"][n] for n in ("ecso_edge", "ecso_no_reuse", "naive"))
    assert [t["image_encodes"] for t in ours] == [1, 0, 0]
    assert [t["image_encodes"] for t in naive] == [2, 2, 2]  # step 1 and the judge, every turn
    for turn in (1, 2):
        # a later turn evaluates only what is new; without reuse the whole history again
        assert ours[turn]["prefilled"] < reference[turn]["prefilled"]
        assert ours[turn]["reused"] > ours[turn - 1]["reused"]
    assert data["ecso_edge_cache"]["conversations"] == 1
    assert "not measured" in data["llama_server"]  # no binary given
    assert "turns 2-3 latency ecso_edge / naive" in proc.stdout
