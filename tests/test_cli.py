"""The `ecso-edge` command as a user runs it: demo, run (text and JSON), make-tiny-model,
selftest, system-info, and errors shown as one line with a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ecso_edge

ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


def ecso(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ecso_edge.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def test_demo_runs_both_branches_on_the_shipped_pair() -> None:
    proc = ecso("demo", "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "== safe path" in out and "== unsafe path" in out
    for step in ("answer", "judge", "caption", "text_only"):
        assert f"[{step:9s}]" in out
    assert out.count("identical tokens to the reference path: True") == 2
    assert "image encodes 1 (reference path without reuse: 2)" in out
    assert "image encodes 1 (reference path without reuse: 3)" in out


def run_on_tiny(image: Path, tiny_paths: tuple[Path, Path], *flags: str) -> subprocess.CompletedProcess[str]:
    text, mmproj = tiny_paths
    return ecso(
        "run", "--model", str(text), "--mmproj", str(mmproj), "--image", str(image),
        "--query", "What is this?", "--max-tokens", "6", "--threads", "1", *flags,
    )


def test_run_prints_json_with_texts_and_stats(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    img = tmp_path / "pic.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(img)
    proc = run_on_tiny(img, tiny_paths, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"answer", "initial_answer", "verdict_text", "caption", "unsafe", "stats"}
    assert data["stats"]["image_encodes"] == 1
    assert data["stats"]["steps"]["answer"]["tokens_generated"] == 6


def test_run_streams_the_answer(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    img = tmp_path / "pic.jpg"
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(img)
    text, mmproj = tiny_paths
    proc = run_on_tiny(img, tiny_paths, "--stream")
    assert proc.returncode == 0, proc.stderr
    model = ecso_edge.Model(text, mmproj, n_threads=1)
    expected = ecso_edge.Session(model).run(img, "What is this?", max_tokens=6).answer
    assert proc.stdout == expected + "\n"


def test_run_reports_a_bad_file_as_one_line_and_exit_1(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    text, _ = tiny_paths
    proc = ecso("run", "--model", str(text), "--mmproj", str(tmp_path / "nope.gguf"), "--image", "x.png",
                "--query", "q")
    assert proc.returncode == 1
    assert proc.stderr.startswith("ecso-edge: error: projector (mmproj)")
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_make_tiny_model_writes_the_shipped_pair(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    proc = ecso("make-tiny-model", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / tiny_paths[0].name).read_bytes() == tiny_paths[0].read_bytes()
    assert (tmp_path / tiny_paths[1].name).read_bytes() == tiny_paths[1].read_bytes()


def test_make_tiny_model_for_a_text_model_writes_a_loadable_projector(
    tmp_path: Path, tiny_paths: tuple[Path, Path]
) -> None:
    proc = ecso("make-tiny-model", str(tmp_path), "--for-text-model", str(tiny_paths[0]), "--vit", "tiny")
    assert proc.returncode == 0, proc.stderr
    written = [p for p in tmp_path.iterdir() if p.suffix == ".gguf"]
    assert len(written) == 1
    ecso_edge.Model(tiny_paths[0], written[0], n_threads=1, n_ctx=256)


def test_selftest_and_system_info_commands() -> None:
    proc = ecso("selftest")
    assert proc.returncode == 0 and "0 failed" in proc.stdout, proc.stdout + proc.stderr
    info = ecso("system-info")
    assert info.returncode == 0 and json.loads(info.stdout)["devices"]


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ecso-edge"
    assert script.is_file()
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0 and "demo" in proc.stdout


@pytest.mark.parametrize("argv, flag, shown", [
    (["demo", "--threads", "0"], "--threads",
     "from 1 to 2147483647 (more than the hardware threads run as that many), got 0"),
    (["demo", "--threads", "-1"], "--threads", "got -1"),
    (["demo", "--max-tokens", "0"], "--max-tokens", "from 1 to 2147483647, got 0"),
    (["demo", "--max-tokens", "2147483648"], "--max-tokens", "got 2147483648"),
    (["demo", "--threads", "1.5"], "--threads", "got '1.5'"),
    (["demo", "--threads", "nan"], "--threads", "got 'nan'"),
    (["run", "--model", "m", "--mmproj", "p", "--image", "i", "--query", "q", "--n-ctx", "0"], "--n-ctx", "got 0"),
    (["run", "--model", "m", "--mmproj", "p", "--image", "i", "--query", "q", "--n-gpu-layers", "-2"],
     "--n-gpu-layers", "(-1: every layer), got -2"),
    (["run", "--model", "m", "--mmproj", "p", "--image", "i", "--query", "q", "--threads-batch", "2147483648"],
     "--threads-batch", "got 2147483648"),
    (["run", "--model", "m", "--mmproj", "p", "--image", "i", "--query", "q", "--repack", "maybe"],
     "--repack", "invalid choice: 'maybe'"),
    (["data-engine", "--input", "x", "--out", "y", "--limit", "-1"], "--limit", "got -1"),
    (["data-engine", "--input", "x", "--out", "y", "--gpus-per-actor", "inf"], "--gpus-per-actor", "got 'inf'"),
    (["data-engine", "--input", "x", "--out", "y", "--actors", "0"], "--actors", "got 0"),
    (["eval", "--benchmark", "jsonl", "--root", "r", "--max-tokens", "1" + "0" * 40], "--max-tokens", "got '1000"),
    (["make-tiny-model", "out", "--image-size", "0"], "--image-size", "got 0"),
    (["serve", "--port", "70000"], "--port", "from 1 to 65535, got 70000"),
    (["serve", "--port", "0"], "--port", "got 0"),
    (["serve", "--max-queue", "-1"], "--max-queue", "from 0 to 1000000, got -1"),
    (["serve", "--max-request-mb", "0"], "--max-request-mb", "got 0"),
    (["serve", "--max-tokens", "-5"], "--max-tokens", "got -5"),
])
def test_bad_numbers_on_the_command_line_exit_2_with_one_line(
        capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, shown: str) -> None:
    from ecso_edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"ecso-edge {argv[0]}: error: argument {flag}: "), err
    assert shown in err


@pytest.mark.parametrize("config, shown", [
    ('{"logit_bias": {"5": 1}}', "--config: EcsoConfig field 'logit_bias' takes a dict {token id (int): bias (float)}"),
    ('{"seed": -1}', "seed"),
    ('{"nope": 1}', "--config: EcsoConfig has no field 'nope'"),
    ('{"temperature": NaN}', "--config: temperature must be a finite number >= 0"),
    ("[]", "--config must be a JSON object"),
    ("{", "--config must be a JSON object of EcsoConfig fields"),
])
def test_a_bad_serve_config_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], config: str,
                                                   shown: str) -> None:
    from ecso_edge.cli import main

    assert main(["serve", "--config", config, "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ecso-edge: error: "), err
    assert shown in err and "incompatible function arguments" not in err


MODEL_COMMANDS = [["eval", "--benchmark", "jsonl", "--root", "r"], ["data-engine", "--input", "x", "--out", "y"],
                  ["serve"], ["chat"], ["run", "--image", "i.png", "--query", "q"]]


def _args(argv: list[str]) -> "argparse.Namespace":
    from ecso_edge.cli import _parser

    return _parser().parse_args(argv)


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: a[0])
def test_without_a_model_the_tiny_pair_runs_with_a_warning(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                           tiny_paths: tuple[Path, Path]) -> None:
    from ecso_edge.cli_options import TINY_WARNING, model_pair

    assert model_pair(_args(argv)) == (str(tiny_paths[0]), str(tiny_paths[1]))
    assert capsys.readouterr().err == TINY_WARNING + "\n"
    assert "--tiny" in TINY_WARNING and "random weights" in TINY_WARNING


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: a[0])
def test_tiny_asks_for_the_tiny_pair_without_a_warning(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                       tiny_paths: tuple[Path, Path]) -> None:
    from ecso_edge.cli_options import model_pair

    assert model_pair(_args([*argv, "--tiny"])) == (str(tiny_paths[0]), str(tiny_paths[1]))
    assert capsys.readouterr().err == ""


TINY_AND_MODEL = "--tiny runs the shipped tiny pair and cannot go with --model/--mmproj; drop --tiny to run your pair"


@pytest.mark.parametrize("flags, shown", [
    (["--tiny", "--model", "m.gguf", "--mmproj", "p.gguf"], TINY_AND_MODEL),
    (["--tiny", "--mmproj", "p.gguf"], TINY_AND_MODEL),
    (["--model", "m.gguf"], "--model and --mmproj go together (or --tiny for the shipped tiny pair)"),
])
def test_tiny_with_a_model_or_half_a_pair_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str],
                                                                 flags: list[str], shown: str) -> None:
    from ecso_edge.cli import main

    assert main(["data-engine", "--input", "x", "--out", "y", *flags]) == 1
    assert capsys.readouterr().err == f"ecso-edge: error: {shown}\n"


@pytest.mark.parametrize("flags", [[], ["--tiny"], ["--model", "m.gguf", "--mmproj", "p.gguf"]])
def test_selftest_runs_on_the_tiny_pair_or_the_one_named_without_a_warning(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_paths: tuple[Path, Path],
        flags: list[str]) -> None:
    from ecso_edge.cli import main

    called: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv, env: called.append(argv) or 0)
    assert main(["selftest", *flags]) == 0
    pair = flags[1::2] if "--model" in flags else [str(p) for p in tiny_paths]
    assert called == [[str(ecso_edge.shipped.selftest_program()), *pair]]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flags, shown", [
    (["--model", "m.gguf"], "--model and --mmproj go together (or --tiny for the shipped tiny pair)"),
    (["--tiny", "--model", "m.gguf", "--mmproj", "p.gguf"], TINY_AND_MODEL),
])
def test_selftest_with_half_a_pair_or_tiny_and_a_model_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str], flags: list[str], shown: str) -> None:
    from ecso_edge.cli import main

    assert main(["selftest", *flags]) == 1
    assert capsys.readouterr().err == f"ecso-edge: error: {shown}\n"


def test_eval_warns_once_when_it_falls_back_to_the_tiny_pair(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "a.png")
    data.write_text(json.dumps({"id": "a", "image": "a.png", "query": "What is this?"}) + "\n")
    argv = ["eval", "--benchmark", "jsonl", "--root", str(data), "--image-root", str(tmp_path),
            "--out-dir", str(tmp_path / "rep"), "--max-tokens", "2", "--threads", "1"]
    fallback, asked = ecso(*argv), ecso(*argv, "--tiny")
    from ecso_edge.cli_options import TINY_WARNING

    assert fallback.returncode == 0 and asked.returncode == 0, fallback.stderr + asked.stderr
    assert fallback.stderr.count(TINY_WARNING) == 1 and TINY_WARNING not in asked.stderr
    assert fallback.stdout == asked.stdout  # the same pair ran


@pytest.mark.parametrize("value, repack", [("on", True), ("off", False)])
def test_repack_flag_reaches_the_model(value: str, repack: bool) -> None:
    from ecso_edge.cli_options import load_model

    model = load_model(_args(["eval", "--benchmark", "jsonl", "--root", "r", "--tiny", "--threads", "1",
                              "--repack", value]))
    assert model.repack is repack


def test_repack_auto_is_the_models_default(tiny_paths: tuple[Path, Path]) -> None:
    from ecso_edge.cli_options import load_model

    model = load_model(_args(["serve", "--tiny", "--threads", "1"]))
    assert model.repack is ecso_edge.Model(*tiny_paths, n_threads=1).repack


def test_serve_passes_repack_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    import ecso_edge.server.runner as runner
    from ecso_edge.cli import main

    seen: list[object] = []

    def model(*args: object, **kwargs: object) -> None:
        seen.append(kwargs["repack"])
        raise ecso_edge.ModelLoadError("stop here")

    monkeypatch.setattr(runner, "Model", model)
    assert main(["serve", "--tiny", "--repack", "off"]) == 1
    assert main(["serve", "--tiny"]) == 1
    assert seen == [False, None]


def test_cli_threads_follow_the_models_rule(tiny_paths: tuple[Path, Path]) -> None:
    from ecso_edge.cli_options import load_model

    many = 1_000_000  # far above any machine's hardware threads: the core clamps, as Model(n_threads=...)
    from_cli = load_model(_args(["eval", "--benchmark", "jsonl", "--root", "r", "--tiny", "--threads", str(many)]))
    from_api = ecso_edge.Model(*tiny_paths, n_threads=many)
    assert from_cli.n_threads == from_api.n_threads == os.cpu_count()
