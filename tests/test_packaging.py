"""What a fresh install must provide: the shipped tiny pair reproduced byte for byte by its
generator, the C++ self-test program, one llama.cpp per process next to llama-cpp-python, typed
stubs that match the module, and system information."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import tiny_models

REPO = Path(__file__).resolve().parent.parent


def test_generator_reproduces_the_shipped_pair_byte_for_byte(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    text, mmproj = tiny_models.write_tiny_pair(tmp_path)
    assert text.read_bytes() == tiny_paths[0].read_bytes()
    assert mmproj.read_bytes() == tiny_paths[1].read_bytes()
    assert (REPO / "models" / text.name).read_bytes() == text.read_bytes()
    assert (REPO / "models" / mmproj.name).read_bytes() == mmproj.read_bytes()
    assert text.stat().st_size + mmproj.stat().st_size < 1_000_000


def test_projector_for_a_text_model_fits_it(tmp_path: Path, tiny_paths: tuple[Path, Path]) -> None:
    out = tiny_models.write_projector_for(tiny_paths[0], tmp_path / "p.gguf", vit="tiny")
    model = ecso_edge.Model(tiny_paths[0], out, n_threads=1, n_ctx=512)
    r = ecso_edge.Session(model).answer(_png_bytes(), "hi", max_tokens=2)
    assert r.stats["image_encodes"] == 1


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_cpp_selftest_runs_ecso_without_python(tiny_paths: tuple[Path, Path]) -> None:
    program = ecso_edge.shipped.selftest_program()
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    proc = subprocess.run(
        [str(program), str(tiny_paths[0]), str(tiny_paths[1])], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^(\d+) passed, 0 failed$", proc.stdout, re.M)
    assert "FAIL" not in proc.stdout


@pytest.mark.parametrize("first", ["ecso_edge", "llama_cpp"])
def test_one_llama_cpp_per_process_alongside_llama_cpp_python(tiny_paths: tuple[Path, Path], first: str) -> None:
    second = "llama_cpp" if first == "ecso_edge" else "ecso_edge"
    script = (
        f"import {first}, {second}, re\n"
        f"m = ecso_edge.Model({str(tiny_paths[0])!r}, {str(tiny_paths[1])!r}, n_threads=1, n_ctx=256)\n"
        f"l = llama_cpp.Llama({str(tiny_paths[0])!r}, n_ctx=256, n_threads=1, verbose=False)\n"
        "assert l.tokenize(b'QUERY: hello', add_bos=False) == m.tokenize('QUERY: hello')\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(sorted(set(re.findall(r'\\S*lib(?:llama|mtmd|ggml-base|ggml-cpu)\\.so\\S*', maps))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    libs = eval(proc.stdout.strip())
    for name in ("libllama", "libmtmd", "libggml-base", "libggml-cpu"):
        assert len([p for p in libs if name + "." in p]) == 1, libs
    assert all("llama_cpp/lib" in p for p in libs), libs


def test_type_stubs_match_the_compiled_module() -> None:
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "ecso_edge._core",
            "--allowlist",
            str(REPO / "tests" / "stubtest_allowlist.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO / "tests"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_is_typed_and_passes_mypy_strict() -> None:
    pytest.importorskip("mypy")
    package = Path(ecso_edge.__file__).parent
    assert (package / "py.typed").is_file() and (package / "_core.pyi").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(REPO / "python" / "ecso_edge")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_system_info_lists_the_cpu_backend() -> None:
    info = ecso_edge.system_info()
    assert isinstance(info["gpu_offload"], bool)
    assert any(d["type"] == "cpu" for d in info["devices"])
    assert "CPU" in info["llama_system_info"]
    assert all(isinstance(name, str) and name for name in info["cpu_extra_buffer_types"])
    assert info["repack_by_default"] is ("AMX" not in info["cpu_extra_buffer_types"])


def test_weight_repacking_is_off_by_default_only_where_the_cpu_offers_amx(tiny_paths: tuple[Path, Path]) -> None:
    # the pinned llama.cpp's AMX matmul crashes on quantized models (system_info.hpp); the tiny pair is
    # F32, which no extra buffer type takes, so both settings load and answer here
    default = ecso_edge.system_info()["repack_by_default"]
    image = np.zeros((32, 32, 3), np.uint8)
    base = ecso_edge.Model(*tiny_paths, n_ctx=256)
    assert base.repack is default
    expected = ecso_edge.Session(base).answer(image, "hi", max_tokens=2).steps[0]
    assert len(expected.tokens) == 2 and expected.stop_reason == "length"
    for repack in (True, False):
        model = ecso_edge.Model(*tiny_paths, n_ctx=256, repack=repack)
        assert model.repack is repack
        step = ecso_edge.Session(model).answer(image, "hi", max_tokens=2).steps[0]
        assert (step.tokens, step.text) == (expected.tokens, expected.text)  # the same kernels on F32


def test_public_api_names() -> None:
    for name in ["Model", "Session", "EcsoConfig", "EcsoError", "ModelLoadError", "ImageError", "ContextOverflowError"]:
        assert name in ecso_edge.__all__ and hasattr(ecso_edge, name)
    assert issubclass(ecso_edge.ImageError, ecso_edge.EcsoError)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    install_and_demo, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert readme.index(install_and_demo) < 400, "the two commands must be the README's first lines"
    assert install_and_demo.endswith("ecso-edge demo")
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines
