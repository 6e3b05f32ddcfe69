"""What each family's single-edit sweep (test_fuzz.py, `-m fuzz`) found: every case here crashed
or hung the process before its fix, and is now a clear error naming the file. Also the guards
of the check process itself: a check that never ends is stopped, and does not outlive its parent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import ConfigError, ModelLoadError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_mutate as gm  # noqa: E402
from isolated_load import PROJECTOR, TEXT_MODEL, load_isolated, quoted  # noqa: E402

VT = gm.ValueType


# --------------------------------------------------------------------------------------------
# Gemma 3: what its single-edit sweep found (each crashed or hung the process before the fix)

_G3_PROJECTOR_CASES = {
    # ggml-cpu GGML_ASSERT(eps >= 0.0f) at the first encode
    "eps NaN": (lambda g: g.set_key("clip.vision.attention.layer_norm_epsilon", float("nan"), VT.FLOAT32),
                "metadata key 'clip.vision.attention.layer_norm_epsilon' has the implausible value nan"),
    # ggml-cpu binary_op: unsupported types (an f16 operand of an add) at the first encode
    "f16 position embedding": (
        lambda g: g.set_tensor("v.position_embd.weight", g.tensors["v.position_embd.weight"].astype(np.float16)),
        re.escape("llama.cpp crashed loading it (SIGABRT in a check process, so this one is unharmed) (llama.cpp: ")
        + ".*binary_op: unsupported types"),
    # clip.cpp "Invalid number of output tokens" abort: a 3x3 pooling of an 8x8 patch grid
    "pooling 3": (lambda g: g.set_key("clip.vision.projector.scale_factor", 3, VT.UINT32),
                  "llama.cpp crashed loading it \\(SIGABRT .*Invalid number of output tokens"),
    # the encode of 1,024 x 1,024 patches never finished
    "image_size 4096": (lambda g: g.set_key("clip.vision.image_size", 4096, VT.UINT32),
                        "image_size 4096 with patch_size 4 makes 1024 patches a side \\(at most 128"),
}


@pytest.mark.parametrize("case", list(_G3_PROJECTOR_CASES))
def test_gemma3_projector_found_by_its_sweep_is_an_error(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                         case: str) -> None:
    text, mmproj = family_pairs["gemma3"]
    edit, message = _G3_PROJECTOR_CASES[case]
    g = gm.Gguf.read(mmproj)
    edit(g)
    bad = g.write(tmp_path / "mmproj.gguf")
    with pytest.raises(ModelLoadError, match="(?s)" + PROJECTOR + quoted(bad)[1:] + ": .*" + message):
        load_isolated(text, bad)


@pytest.mark.parametrize("key, value, message", [
    # std::bad_alloc when the context was created
    ("gemma3.attention.sliding_window", 2**31, "has the implausible value 2147483648 \\(the model's context is 4096\\)"),
    # GGML_ASSERT(hparams.is_swa_any()) when the context was created
    ("gemma3.attention.sliding_window_pattern", 1,
     "is 1, which leaves no layer with the sliding window that 'gemma3.attention.sliding_window' sets"),
])
def test_gemma3_text_model_window_found_by_its_sweep_is_an_error(family_pairs: dict[str, tuple[Path, Path]],
                                                                 tmp_path: Path, key: str, value: int,
                                                                 message: str) -> None:
    text, mmproj = family_pairs["gemma3"]
    bad = gm.Gguf.read(text).set_key(key, value, VT.UINT32).write(tmp_path / "text.gguf")
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + quoted(bad)[1:] + f": metadata key '{key}' " + message):
        load_isolated(bad, mmproj)


# --------------------------------------------------------------------------------------------
# Qwen2.5-VL

@pytest.mark.parametrize("sections", [[16, 3, 3, 0], [4096, 3, 3, 0], [0, 0, 0, 0], [-1, 3, 3, 0]])
def test_qwen25vl_rope_sections_found_by_its_sweep_are_an_error(family_pairs: dict[str, tuple[Path, Path]],
                                                                tmp_path: Path, sections: list[int]) -> None:
    # ggml-cpu GGML_ASSERT(sect_dims <= ne0) at the first decode; a sum of 0 divides by zero
    text, mmproj = family_pairs["qwen2.5vl"]
    bad = gm.Gguf.read(text).set_key("qwen2vl.rope.dimension_sections", sections, VT.ARRAY, VT.INT32) \
        .write(tmp_path / "text.gguf")
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + quoted(bad)[1:] + re.escape(
            ": metadata key 'qwen2vl.rope.dimension_sections' must be 4 or more sections of 0 or more rotary pairs "
            "whose sum is between 1 and the 16 rotated dimensions of a head (the sum is " + str(sum(sections)) + ")")):
        load_isolated(bad, mmproj)


def test_qwen25vl_patch_too_large_for_its_windows_is_an_error(family_pairs: dict[str, tuple[Path, Path]],
                                                              tmp_path: Path) -> None:
    # mtmd looped forever: 112 px windows of 0 merged tokens
    text, mmproj = family_pairs["qwen2.5vl"]
    bad = gm.Gguf.read(mmproj).set_key("clip.vision.patch_size", 64, VT.UINT32).write(tmp_path / "mmproj.gguf")
    with pytest.raises(ModelLoadError, match=PROJECTOR + quoted(bad)[1:] + re.escape(
            ": patch_size 64 leaves no 2x2 group of patches in the 112 px attention windows that "
            "clip.vision.n_wa_pattern turns on (at most 56 px fit)")):
        load_isolated(text, bad)


# --------------------------------------------------------------------------------------------
# Qwen3-VL

@pytest.mark.parametrize("value", [2**31 - 1, 2**32 - 1, 3])
def test_qwen3vl_deepstack_layers_found_by_its_sweep_are_an_error(family_pairs: dict[str, tuple[Path, Path]],
                                                                  tmp_path: Path, value: int) -> None:
    # 2^31 - 1 and up overflowed the input width: ggml.c GGML_ASSERT(... <= ggml_nbytes(view_src))
    text, mmproj = family_pairs["qwen3vl"]
    bad = gm.Gguf.read(text).set_key("qwen3vl.n_deepstack_layers", value, VT.UINT32).write(tmp_path / "text.gguf")
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + quoted(bad)[1:] + re.escape(
            f": metadata key 'qwen3vl.n_deepstack_layers' has the implausible value {value}")):
        load_isolated(bad, mmproj)


# --------------------------------------------------------------------------------------------
# Pixtral

@pytest.mark.parametrize("family", ["pixtral", "qwen2.5vl"])
def test_vision_heads_without_rotary_pairs_found_by_the_pixtral_sweep_are_an_error(
        family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path, family: str) -> None:
    # 32 heads of a 32-wide tower: heads of 1 dimension, and the encode's 2-D rope never finished
    text, mmproj = family_pairs[family]
    bad = gm.Gguf.read(mmproj).set_key("clip.vision.attention.head_count", 32, VT.UINT32).write(tmp_path / "m.gguf")
    with pytest.raises(ModelLoadError, match=PROJECTOR + quoted(bad)[1:] + re.escape(
            ": clip.vision.attention.head_count 32 does not split the 32-wide vision tower into heads of an even "
            "size, which its rotary positions need")):
        load_isolated(text, bad)


# --------------------------------------------------------------------------------------------
# The check process's own guards

def test_a_check_that_does_not_finish_is_stopped(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # a stand-in for a checker that loops on a damaged file: it never ends by itself
    stuck = tmp_path / "stuck-checker"
    stuck.write_text("#!/bin/sh\nexec sleep 3600\n")
    stuck.chmod(0o755)
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ECSO_CHECK_PROJECTOR", str(stuck))
    monkeypatch.setenv("ECSO_PROJECTOR_CHECK_TIMEOUT", "0.5")
    text, mmproj = family_pairs["qwen2.5vl"]
    with pytest.raises(ModelLoadError, match=PROJECTOR + quoted(mmproj)[1:] + re.escape(
            ": the check process loading it did not finish within 0.5 s, and was stopped. The file is likely "
            "damaged (mtmd loops on it); if it is a very large projector on a slow machine, raise "
            "ECSO_PROJECTOR_CHECK_TIMEOUT (seconds)")):
        ecso_edge.Model(text, mmproj, n_threads=1)


@pytest.mark.parametrize("name, value, message", [
    ("ECSO_PROJECTOR_CHECK_TIMEOUT", "soon", "the environment variable ECSO_PROJECTOR_CHECK_TIMEOUT is 'soon', not a "
                                             "number of seconds"),
    ("ECSO_PROJECTOR_CHECK_TIMEOUT", "-1", "the environment variable ECSO_PROJECTOR_CHECK_TIMEOUT is '-1', not a "
                                           "number of seconds"),
    ("ECSO_CHECK_PROJECTOR", "/nonexistent/checker", "the environment variable ECSO_CHECK_PROJECTOR names "
                                                     "'/nonexistent/checker', which is not an executable file"),
])
def test_check_settings_that_are_wrong_are_named(family_pairs: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                 message: str) -> None:
    monkeypatch.setenv("ECSO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        ecso_edge.Model(*family_pairs["qwen2.5vl"], n_threads=1)


def test_the_checker_ends_itself_when_its_parent_is_gone(family_pairs: dict[str, tuple[Path, Path]]) -> None:
    # --parent names the process that waits for the check; a checker re-parented (its parent was
    # killed) ends at once instead of looping on for good
    checker = Path(ecso_edge.__file__).parent / "bin" / "ecso-check-projector"
    text, mmproj = family_pairs["qwen2.5vl"]
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is not the checker's parent
    proc = subprocess.run([str(checker), str(text), str(mmproj), "--parent", str(gone.pid)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert "ecso-check-projector: the process that started this check is gone" in proc.stderr
    ok = subprocess.run([str(checker), str(text), str(mmproj), "--parent", str(os.getpid())],
                        capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
