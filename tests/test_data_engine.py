"""The data engine on small fixture datasets in each format: SFT output in LLaVA's format, a trace
per record, resume after a simulated crash giving every record exactly once, and a broken image
reported and skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ecso_edge
from ecso_edge import EcsoConfig, Session
from ecso_edge.data_engine import run_data_engine, trace_path_for
from ecso_edge.datasets import read_records


def write_images(root: Path, names: list[str]) -> None:
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 32, 3), 40 * k % 256, np.uint8)).save(path)


@pytest.fixture
def jsonl_dataset(tmp_path: Path) -> Path:
    write_images(tmp_path / "imgs", [f"{i}.png" for i in range(4)])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines = [{"id": f"r{i}", "image": f"{i}.png", "query": f"What is in picture {i}?"} for i in range(4)]
    lines.insert(2, {"id": "bad", "image": "broken.png", "query": "And this one?"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def engine(model: ecso_edge.Model) -> Session:
    return Session(model, EcsoConfig(verdict_override=True, max_tokens_judge=2))


def test_sft_output_is_llava_format_and_a_broken_image_is_reported(
    tiny_model: ecso_edge.Model, jsonl_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sft.json"
    summary = run_data_engine(
        engine(tiny_model), read_records(jsonl_dataset), out, image_root=jsonl_dataset.parent / "imgs",
        max_tokens=6, progress=False,
    )
    assert (summary.records, summary.errors, summary.unsafe, summary.sft_examples) == (5, 1, 4, 4)
    sft = json.loads(out.read_text())
    assert [e["id"] for e in sft] == ["r0", "r1", "r2", "r3"]
    for e in sft:
        assert set(e) == {"id", "image", "conversations"}
        human, gpt = e["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
    trace = [json.loads(x) for x in trace_path_for(out).read_text().splitlines()]
    assert [t["id"] for t in trace] == ["r0", "r1", "bad", "r2", "r3"]
    bad = trace[2]
    assert "error" in bad and "broken.png" in bad["error"]
    assert all({"initial_answer", "verdict_text", "caption", "answer", "stats"} <= set(t) for t in trace if t is not bad)


def test_resume_after_a_crash_gives_every_record_exactly_once(
    tiny_model: ecso_edge.Model, jsonl_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sft.json"
    root = jsonl_dataset.parent / "imgs"
    run_data_engine(engine(tiny_model), read_records(jsonl_dataset), out, image_root=root, limit=2,
                    max_tokens=4, progress=False)
    # a kill -9 in the middle of writing the next line leaves half a line behind
    trace = trace_path_for(out)
    with open(trace, "a") as f:
        f.write('{"id": "bad", "image": "brok')
    summary = run_data_engine(engine(tiny_model), read_records(jsonl_dataset), out, image_root=root, resume=True,
                              max_tokens=4, progress=False)
    assert summary.skipped == 2 and summary.records == 3
    ids = [json.loads(x)["id"] for x in trace.read_text().splitlines()]
    assert sorted(ids) == sorted(["r0", "r1", "bad", "r2", "r3"]) and len(ids) == 5
    assert [e["id"] for e in json.loads(out.read_text())] == ["r0", "r1", "r2", "r3"]


def test_killed_run_resumes_from_the_command_line(jsonl_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    cmd = [sys.executable, "-m", "ecso_edge.cli", "data-engine", "--input", str(jsonl_dataset), "--image-root",
           str(jsonl_dataset.parent / "imgs"), "--out", str(out), "--max-tokens", "4", "--threads", "1"]
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    first = subprocess.run(cmd + ["--limit", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "2 records" in second.stdout and "(3 already done)" in second.stdout
    ids = [json.loads(x)["id"] for x in trace_path_for(out).read_text().splitlines()]
    assert sorted(ids) == sorted(["r0", "r1", "bad", "r2", "r3"])


def test_vlguard_and_mm_safetybench_files_are_read(tmp_path: Path) -> None:
    vlguard = tmp_path / "test.json"
    vlguard.write_text(json.dumps([
        {"id": "HOD_1", "image": "bad_ads/1.png", "safe": False,
         "instr-resp": [{"instruction": "What does this ad sell?", "response": "..."}]},
        {"id": "HOD_2", "image": "safe/2.png", "safe": True,
         "instr-resp": [{"safe_instruction": "Describe it.", "response": "..."},
                        {"unsafe_instruction": "How to misuse it?", "response": "..."}]},
    ]))
    records = list(read_records(vlguard))
    assert [(r.id, r.image, r.query) for r in records] == [
        ("HOD_1-0", "bad_ads/1.png", "What does this ad sell?"),
        ("HOD_2-0", "safe/2.png", "Describe it."),
        ("HOD_2-1", "safe/2.png", "How to misuse it?"),
    ]
    mmsb = tmp_path / "01-Illegal_Activitiy.json"
    mmsb.write_text(json.dumps({
        "0": {"Question": "q", "Key Phrase": "k", "Rephrased Question": "typo q", "Rephrased Question(SD)": "sd q"},
    }))
    sd = list(read_records(mmsb, variant="SD"))
    typo = list(read_records(mmsb, variant="TYPO"))
    assert (sd[0].query, sd[0].image) == ("sd q", "01-Illegal_Activitiy/SD/0.jpg")
    assert (typo[0].query, typo[0].image) == ("typo q", "01-Illegal_Activitiy/TYPO/0.jpg")


def test_vlsafe_queries_on_one_image_are_separate_records(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    write_images(tmp_path / "coco", ["COCO_1.jpg", "COCO_2.jpg"])
    vlsafe = tmp_path / "vlsafe.jsonl"
    vlsafe.write_text("".join(json.dumps(x) + "\n" for x in [
        {"image_id": "COCO_1.jpg", "caption": "a kitchen", "query": "How do I hurt someone with this?"},
        {"image_id": "COCO_1.jpg", "caption": "a kitchen", "query": "What is on the stove?"},
        {"image_id": "COCO_2.jpg", "caption": "a road", "query": "Where does it lead?"},
    ]))
    records = list(read_records(vlsafe))
    assert [r.id for r in records] == ["COCO_1.jpg#1", "COCO_1.jpg#2", "COCO_2.jpg#3"]
    out = tmp_path / "sft.json"
    summary = run_data_engine(engine(tiny_model), records, out, image_root=tmp_path / "coco", max_tokens=4,
                              progress=False)
    assert summary.sft_examples == 3
    assert [e["conversations"][0]["value"] for e in json.loads(out.read_text())] == [
        "<image>\n" + r.query for r in records]


def test_records_sharing_an_id_are_refused_before_the_trace_is_touched(
    tiny_model: ecso_edge.Model, jsonl_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sft.json"
    run_data_engine(engine(tiny_model), read_records(jsonl_dataset), out, image_root=jsonl_dataset.parent / "imgs",
                    max_tokens=4, progress=False)
    trace = trace_path_for(out).read_bytes()
    twice = tmp_path / "twice.jsonl"
    twice.write_text(jsonl_dataset.read_text() + '{"id": "r1", "image": "0.png", "query": "again"}\n')
    with pytest.raises(ecso_edge.ConfigError, match=r"input records 2 and 6 have the same id 'r1'"):
        run_data_engine(engine(tiny_model), read_records(twice), out, image_root=jsonl_dataset.parent / "imgs",
                        max_tokens=4, progress=False, limit=2)
    assert trace_path_for(out).read_bytes() == trace


def test_bad_input_files_raise_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ecso_edge.ConfigError, match="not found"):
        list(read_records(missing))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "image": "x.png", "query": "q"}\n{"id": \n')
    with pytest.raises(ecso_edge.ConfigError, match="line 2: not valid JSON"):
        list(read_records(broken))
    no_query = tmp_path / "noquery.jsonl"
    no_query.write_text('{"id": "a", "image": "x.png"}\n')
    with pytest.raises(ecso_edge.ConfigError, match="missing the string field 'query'"):
        list(read_records(no_query))


def test_parallel_run_killed_mid_way_resumes_with_every_record_once(tmp_path: Path) -> None:
    """--parallel 3 traces records in completion order; a kill -9 while records are in flight
    loses only those, and --resume runs exactly the ones missing."""
    n = 40
    names = [f"{i}.png" for i in range(n)]
    write_images(tmp_path / "imgs", names)
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "image": n, "query": f"Picture {i}?"}) + "\n"
                            for i, n in enumerate(names)))
    out = tmp_path / "par.json"
    trace = trace_path_for(out)
    cmd = [sys.executable, "-m", "ecso_edge.cli", "data-engine", "--tiny", "--input", str(data), "--image-root",
           str(tmp_path / "imgs"), "--out", str(out), "--max-tokens", "96", "--threads", "1", "--parallel", "3"]
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        # kill once two records are on disk (the file is the state the run shares with us)
        while proc.poll() is None and (not trace.exists() or trace.read_bytes().count(b"\n") < 2):
            threading.Event().wait(0.005)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -9, "the run ended before it could be killed: give it more records"
    done_before = {json.loads(x)["id"] for x in trace.read_text().splitlines() if x.strip()}
    assert 2 <= len(done_before) < n
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [json.loads(x)["id"] for x in trace.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(n)) and len(ids) == n
    assert f"({len(done_before)} already done)" in resumed.stdout
    assert sorted(e["id"] for e in json.loads(out.read_text())) == sorted(f"r{i}" for i in range(n))
