"""The data engine on Ray Data. One test starts a real local Ray cluster (2 CPUs: actors are separate
worker processes, unlike the deprecated `local_mode`) and runs 2 actors on the tiny pair: the same
records and answers as the single-process run, each exactly once, a broken image traced with its
error, and a resumed run (through the CLI) after a crash. Another checks the error without Ray."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.cli import main
from ecso_edge.data_engine import run_data_engine, trace_path_for
from ecso_edge.datasets import read_records
from ecso_edge.ray_engine import run_data_engine_ray

N_CTX = 2048
CONFIG = dict(verdict_override=True, max_tokens_judge=2)  # every record takes all four steps
COMPARED = ("id", "image", "query", "initial_answer", "verdict_text", "unsafe", "caption", "answer", "error")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines = [{"id": f"r{i}", "image": f"{i}.png", "query": f"What is in picture {i}?"} for i in range(6)]
    lines.insert(3, {"id": "bad", "image": "broken.png", "query": "And this one?"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def read_trace(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trace_path_for(out).read_text().splitlines()]


def by_id(entries: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {e["id"]: tuple(e.get(k) for k in COMPARED) for e in entries}


@pytest.mark.slow
# Ray's own notices: its DataContext defaults (2.60), accelerator env var plans and log files and
# subprocess handles it leaves to the garbage collector (2.51); collected below, inside this test
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:ray.data.context",
    "ignore::FutureWarning:ray._private.worker",
    "ignore::ResourceWarning",
)
def test_ray_actors_give_the_single_process_records_exactly_once_and_resume(
    tiny_model: ecso_edge.Model, dataset: Path, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray", reason="the Ray engine's test needs pip install 'ecso-edge[ray]'")
    root = (dataset.parent / "imgs").resolve()
    ids = ["r0", "r1", "r2", "bad", "r3", "r4", "r5"]

    ref_out = tmp_path / "ref" / "sft.json"
    run_data_engine(Session(tiny_model, EcsoConfig(**CONFIG)), read_records(dataset), ref_out, image_root=root,
                    max_tokens=6, progress=False)
    reference = read_trace(ref_out)
    assert [e["id"] for e in reference] == ids

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=96 * 1024 * 1024,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        out = tmp_path / "ray" / "sft.json"
        summary = run_data_engine_ray(
            read_records(dataset), out, config=EcsoConfig(**CONFIG), model_kwargs={"n_ctx": N_CTX, "n_threads": 1},
            actors=2, image_root=root, max_tokens=6, progress=False,
        )
        counts = (summary.records, summary.skipped, summary.errors, summary.unsafe, summary.sft_examples)
        assert counts == (7, 0, 1, 6, 6)
        trace = read_trace(out)
        assert sorted(e["id"] for e in trace) == sorted(ids)  # every record exactly once
        assert by_id(trace) == by_id(reference)  # same answers: greedy decoding, same model settings
        bad = next(e for e in trace if e["id"] == "bad")
        assert "broken.png" in bad["error"] and "answer" not in bad
        workers = {e["worker"] for e in trace}
        assert 1 <= len(workers) <= 2 and all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
        sft = json.loads(out.read_text())
        ref_sft = json.loads(ref_out.read_text())
        assert sorted(sft, key=lambda e: e["id"]) == ref_sft  # ids r0..r5 sort in input order

        # a killed run: three records on disk, then half of the next line
        resumed = tmp_path / "resumed" / "sft.json"
        resumed.parent.mkdir()
        done = trace_path_for(ref_out).read_text().splitlines(keepends=True)[:3]
        trace_path_for(resumed).write_text("".join(done) + '{"id": "bad", "image": "brok')
        code = main(["data-engine", "--input", str(dataset), "--image-root", str(root), "--out", str(resumed),
                     "--max-tokens", "6", "--n-ctx", str(N_CTX), "--threads", "1", "--resume",
                     "--ray", "--actors", "2"])
        assert code == 0
        trace = read_trace(resumed)
        assert sorted(e["id"] for e in trace) == sorted(ids)
        assert [e["id"] for e in trace[:3]] == ["r0", "r1", "r2"] and all("worker" in e for e in trace[3:])
        # the CLI runs the paper's preset (the judge decides): same ids, each once, in the SFT JSON
        assert sorted(e["id"] for e in json.loads(resumed.read_text())) == ["r0", "r1", "r2", "r3", "r4", "r5"]

        # an actor that cannot load its model stops the run with the typed error, as without Ray
        text, _ = ecso_edge.tiny_pair()
        broken = tmp_path / "broken" / "sft.json"
        with pytest.raises(ecso_edge.ModelLoadError, match="on Ray worker .*not a vision projector"):
            run_data_engine_ray(read_records(dataset), broken, model_path=text, mmproj_path=text,
                                model_kwargs={"n_ctx": N_CTX}, actors=1, image_root=root, progress=False)
        assert trace_path_for(broken).read_text() == "" and not broken.exists()
    finally:
        ray.shutdown()
        gc.collect()


def test_ray_engine_without_ray_says_how_to_install_it(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(ecso_edge.ConfigError, match=r"pip install 'ecso-edge\[ray\]'"):
        run_data_engine_ray(read_records(dataset), tmp_path / "sft.json")
    code = main(["data-engine", "--input", str(dataset), "--out", str(tmp_path / "sft.json"), "--ray"])
    assert code == 1 and "pip install 'ecso-edge[ray]'" in capsys.readouterr().err
    assert not trace_path_for(tmp_path / "sft.json").exists()  # nothing started, nothing written
