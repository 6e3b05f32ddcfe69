"""Deterministic regression tests for what the fuzz suite (test_fuzz.py) found: each input here
crashed the process (SIGABRT inside llama.cpp or mtmd) or escaped as an untyped Python exception
before it was fixed. See docs/robustness.md for the list."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import numpy as np
import pytest

import ecso_edge
from ecso_edge import ConfigError, EcsoConfig, ImageError, ModelLoadError, Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_mutate as gm  # noqa: E402
from test_errors import load_isolated  # noqa: E402

VT = gm.ValueType
TEXT_MODEL = re.escape("text model '")


@pytest.mark.parametrize("blocks", [0, 513, 27399])
def test_text_model_block_count_out_of_range_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path,
                                                        blocks: int) -> None:
    # was: GGML_ASSERT(hparams.n_layer_all > 0 && hparams.n_layer_all <= LLAMA_MAX_LAYERS) -> SIGABRT
    bad = gm.mutated(tiny_paths[0], tmp_path / "blocks.gguf", set_keys={"llama.block_count": (blocks, VT.UINT32)})
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + re.escape(
            f"{bad}': metadata key 'llama.block_count' has the implausible value {blocks}. The file is malformed")):
        load_isolated(bad, tiny_paths[1])


@pytest.mark.parametrize("tensor", ["output_norm.weight", "blk.0.ffn_norm.weight", "blk.1.attn_norm.weight"])
def test_text_model_one_dimensional_tensor_in_f16_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path,
                                                             tensor: str) -> None:
    # was: ggml-cpu ops.cpp binary_op: unsupported types: dst: f32, src0: f32, src1: f16 -> SIGABRT
    g = gm.Gguf.read(tiny_paths[0])
    bad = g.set_tensor(tensor, g.tensors[tensor].astype(np.float16)).write(tmp_path / "f16-norm.gguf")
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + re.escape(
            f"{bad}': tensor '{tensor}' is f16 but must be f32. The file was converted incorrectly")):
        load_isolated(bad, tiny_paths[1])


def test_text_model_with_a_duplicate_token_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path) -> None:
    # was: llama-vocab.cpp GGML_ASSERT(id_to_token.size() == token_to_id.size()) -> SIGABRT
    g = gm.Gguf.read(tiny_paths[0])
    tokens = list(g.keys["tokenizer.ggml.tokens"].value)
    tokens[300] = tokens[299]
    bad = g.set_key("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING).write(tmp_path / "dup.gguf")
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + re.escape(
            f"{bad}': metadata key 'tokenizer.ggml.tokens' holds the token text at index 300 twice")):
        load_isolated(bad, tiny_paths[1])


def test_error_quoting_invalid_utf8_from_the_file_is_still_a_model_load_error(
    tiny_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    # was: UnicodeDecodeError while raising the error, because its message quoted the file's bytes
    data = tiny_paths[0].read_bytes()
    at = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8  # type, length
    assert data[at:at + 5] == b"llama"
    bad = tmp_path / "arch.gguf"
    bad.write_bytes(data[:at] + b"ll\xffma" + data[at + 5:])
    with pytest.raises(ModelLoadError, match=re.escape("required metadata key 'll\ufffdma.embedding_length' is missing")):
        load_isolated(bad, tiny_paths[1])


@pytest.mark.parametrize("api", ["run", "answer", "stream"])
def test_query_with_a_lone_surrogate_is_a_config_error(tiny_model: ecso_edge.Model, image: np.ndarray,
                                                       api: str) -> None:
    # was: TypeError from pybind11 (a str with a lone surrogate has no UTF-8 form)
    session = Session(tiny_model)
    with pytest.raises(ConfigError, match=re.escape(
            "the query is not valid Unicode: character 5 is a lone surrogate ('\\udcff'); decode the text")):
        if api == "stream":
            list(session.stream(image, "What \udcff is this?", max_tokens=2))
        else:
            getattr(session, api)(image, "What \udcff is this?", max_tokens=2)


def test_judged_response_with_a_lone_surrogate_is_a_config_error(tiny_model: ecso_edge.Model,
                                                                 image: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="the response is not valid Unicode: character 0 is a lone surrogate"):
        Session(tiny_model).judge(image, "What is this?", "\ud800 sure")


def test_query_as_invalid_utf8_bytes_is_a_config_error(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="the query is not valid UTF-8"):
        Session(tiny_model).run(image, b"caf\xc3", max_tokens=2)  # type: ignore[arg-type]


def test_huge_file_that_is_no_image_is_refused_without_reading_it(tiny_model: ecso_edge.Model,
                                                                    tmp_path: Path) -> None:
    # was: MemoryError: the whole file was read into memory before Pillow looked at it
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of nothing, sparse: no disk space used
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ImageError, match=re.escape(f"image file '{sparse}': not an image format Pillow can read")):
        Session(tiny_model).answer(sparse, "What is this?", max_tokens=1)
    # only Pillow's look at the header was read: nothing near the file's 64 GiB reached memory
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024


def test_media_marker_in_every_text_field_adds_no_image_slot(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    # the fuzz suite checks this invariant on every accepted prompt; here it is pinned on both branches
    marker = "<__media__>"
    for unsafe in (False, True):
        r = Session(tiny_model, EcsoConfig(verdict_override=unsafe)).run(
            image, f"{marker} what {marker}{marker} is this {marker}", max_tokens=3)
        assert r.stats["image_encodes"] == 1 and r.stats["image_tokens"] == 16
        for step in r.steps:
            assert step.input_tokens.count(-1) == (0 if step.name == "text_only" else 1), step.name
        assert marker.encode() in b"".join(tiny_model.token_bytes(t) for t in r.steps[0].input_tokens if t >= 0) \
            .replace("▁".encode(), b" ")


@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("-inf")], ids=["negative", "nan", "-inf"])
def test_text_model_bad_rms_epsilon_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path, eps: float) -> None:
    # was: ggml-cpu ops.cpp GGML_ASSERT(eps >= 0.0f) at the first decode -> SIGABRT
    bad = gm.mutated(tiny_paths[0], tmp_path / "eps.gguf",
                     set_keys={"llama.attention.layer_norm_rms_epsilon": (eps, VT.FLOAT32)})
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + re.escape(
            f"{bad}': metadata key 'llama.attention.layer_norm_rms_epsilon' has the implausible value")):
        load_isolated(bad, tiny_paths[1])


@pytest.mark.parametrize("tokenizer", ["bert", "rwkv"])
def test_text_model_byte_tokens_in_a_vocabulary_without_them_are_refused(
    tiny_paths: tuple[Path, Path], tmp_path: Path, tokenizer: str
) -> None:
    # was: llama-vocab.cpp token_to_byte GGML_ABORT("fatal error") on the first byte token -> SIGABRT
    bad = gm.mutated(tiny_paths[0], tmp_path / "vocab.gguf", set_keys={"tokenizer.ggml.model": (tokenizer, VT.STRING)})
    with pytest.raises(ModelLoadError, match=TEXT_MODEL + re.escape(
            f"{bad}': its '{tokenizer}' vocabulary (tokenizer.ggml.model) has byte tokens")):
        load_isolated(bad, tiny_paths[1])


@pytest.mark.parametrize("size", [1, 7])
def test_projector_image_smaller_than_a_patch_is_refused(tiny_paths: tuple[Path, Path], tmp_path: Path,
                                                         size: int) -> None:
    # was: mtmd-helper GGML_ASSERT(n_tokens > 0 && ...) when the image was decoded -> SIGABRT
    bad = gm.mutated(tiny_paths[1], tmp_path / "size.gguf", set_keys={"clip.vision.image_size": (size, VT.UINT32)})
    with pytest.raises(ModelLoadError, match=re.escape(
            f"'{bad}': image_size {size} is smaller than patch_size 8: the image would have no patches")):
        load_isolated(tiny_paths[0], bad)
