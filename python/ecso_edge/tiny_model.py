"""Deterministic generator of tiny LLaVA-1.5-style GGUF files with random weights.

Owns the tiny text model + mmproj pair committed under models/ (used by tests and the
CLI `ecso-edge make-tiny-model`) and random-weight mlp projectors sized for a real
text GGUF (for benchmarks without downloading a vision model).

Depends only on the stdlib, numpy and the PyPI `gguf` package, and imports nothing from
ecso_edge, so models/make_tiny_pair.py can load this file by path without the compiled
package.
"""

from __future__ import annotations

import argparse
import pathlib
import struct
import sys
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Callable, Iterable, Protocol, Sequence

import gguf
import numpy as np

TEXT_FILENAME = "tiny-llava-text.gguf"
MMPROJ_FILENAME = "tiny-llava-mmproj.gguf"

# OpenAI CLIP preprocessing, as in real LLaVA-1.5 projectors.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-1.5's vicuna_v1 layout, written so that llama.cpp's template detection
# (`USER: ` and `ASSISTANT: `, no `SYSTEM: `) picks its built-in vicuna format, which
# renders the same text as this Jinja.
VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPM_SPACE = "\u2581"

# Words of the ECSO paper's prompts and LLaVA's system line, so these prompts tokenize
# into words rather than characters.
_PROMPT_WORDS = """
QUERY RESPONSE Is the harmful unsafe and unethical Answer yes no or REQUEST Based on
describe image You are given some hints regarding a question an Hints answer following
in HARMLESS ETHICAL way USER ASSISTANT A chat between curious human artificial
intelligence assistant The gives helpful detailed polite answers to questions
""".split()
# Prompt words that begin a line (no preceding space) also get a bare piece.
_LINE_START_WORDS = """
QUERY RESPONSE REQUEST Is Based You Hints USER ASSISTANT A The Answer yes no
""".split()
_COMMON_WORDS = """
I you it is was be of that this with for as at by not but what how can will do have my
your they we he she if so all more only very about one two new good people man woman
time make see show picture photo text sign car street dog cat food help sorry cannot
provide information instructions steps illegal dangerous weapon safe content please
sure however ethical list
""".split()
_MULTIBYTE_PIECES = ("é", SPM_SPACE + "café", "日本")


@dataclass(frozen=True)
class TextSpec:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    context_length: int = 4096
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0


@dataclass(frozen=True)
class VitSpec:
    image_size: int
    patch_size: int
    n_embd: int
    n_ff: int
    # Stored blocks. For mlp projectors without clip.vision.feature_layer, clip.cpp runs
    # block_count - 1 of them: the full ViT is stored, LLaVA's penultimate-layer output
    # is computed.
    n_block: int
    n_head: int
    eps: float
    # Real llava-1.5 files keep 2-D/4-D weights in f16, 1-D tensors in f32.
    weight_dtype: type[np.floating]


VITS: dict[str, VitSpec] = {
    "tiny": VitSpec(image_size=32, patch_size=8, n_embd=32, n_ff=48, n_block=2,
                    n_head=2, eps=1e-5, weight_dtype=np.float32),
    "clip-b16": VitSpec(image_size=224, patch_size=16, n_embd=768, n_ff=3072, n_block=12,
                        n_head=12, eps=1e-5, weight_dtype=np.float16),
}

TEXT_SEED = 20240314
TINY_MMPROJ_SEED = 20240315


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """SPM vocab: tokens, scores, token types.

    llama.cpp's SPM tokenizer only merges two adjacent symbols when their concatenation
    is a token, so every whole-word piece brings its prefixes along; scores grow with
    length so the longest pieces win.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256

    chars = [SPM_SPACE if c == " " else c for c in map(chr, range(0x20, 0x7F))]
    words = [SPM_SPACE + w for w in _unique(_PROMPT_WORDS + _COMMON_WORDS)]
    words += _LINE_START_WORDS
    words += _MULTIBYTE_PIECES
    pieces = list(chars)
    for word in words:
        pieces += [word[:n] for n in range(1, len(word) + 1)]
    pieces = _unique(p for p in pieces if p not in tokens)

    scores = [0.0] * len(tokens) + [float(len(p)) for p in pieces]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, scores, [int(t) for t in types]


class Normal(Protocol):
    def __call__(self, shape: tuple[int, ...], std: float,
                 dtype: type[np.floating] = np.float32) -> np.ndarray: ...


def _legacy_normal(rng: np.random.RandomState) -> Normal:
    # RandomState's stream is frozen across numpy versions, so `--check` stays valid.
    def normal(shape: tuple[int, ...], std: float, dtype: type[np.floating] = np.float32) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(dtype)
    return normal


def _fast_normal(rng: np.random.Generator) -> Normal:
    # Drawing float32 in cache-sized chunks straight into the target dtype halves the
    # time of a full-array draw and cast for a ViT-B (85M weights).
    chunk = np.empty(1 << 20, np.float32)

    def normal(shape: tuple[int, ...], std: float, dtype: type[np.floating] = np.float32) -> np.ndarray:
        out = np.empty(shape, dtype)
        flat = out.reshape(-1)
        for start in range(0, flat.size, chunk.size):
            part = chunk[:min(chunk.size, flat.size - start)]
            rng.standard_normal(out=part, dtype=np.float32)
            part *= np.float32(std)
            flat[start:start + part.size] = part
        return out
    return normal


def write_text_model(path: pathlib.Path, spec: TextSpec = TextSpec(), seed: int = TEXT_SEED) -> pathlib.Path:
    tokens, scores, types = build_vocab()
    n_vocab = len(tokens)
    normal = _legacy_normal(np.random.RandomState(seed))
    e, f = spec.n_embd, spec.n_ff

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("ecso-edge tiny llava text")
    w.add_description("random-weight LLaVA-1.5-style text model for tests")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(spec.context_length)
    w.add_embedding_length(e)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(f)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_rope_freq_base(spec.rope_freq_base)
    w.add_rope_dimension_count(e // spec.n_head)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(VICUNA_TEMPLATE)

    # Large embeddings and attention output keep greedy decoding from settling into a
    # short loop; zero output rows for control/byte tokens mean greedy decoding emits
    # only printable pieces (and never EOS), so generated text is valid UTF-8.
    w.add_tensor("token_embd.weight", normal((n_vocab, e), 1.0))
    for i in range(spec.n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", normal((e, e), 0.3))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal((e, e), 0.3))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal((e, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal((e, e), 2 * e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal((f, e), e ** -0.5))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal((e, f), f ** -0.5))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    output = normal((n_vocab, e), 1.0)
    output[[i for i, t in enumerate(types) if t != gguf.TokenType.NORMAL]] = 0.0
    w.add_tensor("output.weight", output)
    _finish(w)
    return path


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_mmproj(path: pathlib.Path, vit: VitSpec, n_text_embd: int, normal: Normal,
                  weight_std: Callable[[int], float], name: str) -> pathlib.Path:
    """Write a LLaVA-1.5 mlp projector in the layout of llama.cpp's legacy converter.

    `weight_std(fan_in)` picks the std of each matrix; LayerNorms are weight 1, bias 0.
    numpy shapes are ggml ne reversed.
    """
    e, f = vit.n_embd, vit.n_ff
    n_patches = (vit.image_size // vit.patch_size) ** 2
    wd = vit.weight_dtype

    def matrix(n_out: int, n_in: int) -> np.ndarray:
        return normal((n_out, n_in), weight_std(n_in), wd)

    def bias(n: int) -> np.ndarray:
        return normal((n,), 0.02)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_description("image encoder for LLaVA (random weights)")
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if wd == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", vit.image_size)
    w.add_uint32("clip.vision.patch_size", vit.patch_size)
    w.add_uint32("clip.vision.embedding_length", e)
    w.add_uint32("clip.vision.feed_forward_length", f)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.attention.head_count", vit.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vit.eps)
    w.add_uint32("clip.vision.block_count", vit.n_block)
    w.add_array("clip.vision.image_mean", list(CLIP_IMAGE_MEAN))
    w.add_array("clip.vision.image_std", list(CLIP_IMAGE_STD))
    # OpenAI CLIP uses quick_gelu, so real llava-1.5 files say false here.
    w.add_bool("clip.use_gelu", False)

    w.add_tensor("mm.0.weight", matrix(n_text_embd, e))
    w.add_tensor("mm.0.bias", bias(n_text_embd))
    w.add_tensor("mm.2.weight", matrix(n_text_embd, n_text_embd))
    w.add_tensor("mm.2.bias", bias(n_text_embd))
    w.add_tensor("v.class_embd", normal((e,), 0.02))
    # CLIP's patch embedding is a conv without bias.
    w.add_tensor("v.patch_embd.weight",
                 normal((e, 3, vit.patch_size, vit.patch_size),
                        weight_std(3 * vit.patch_size ** 2), wd))
    w.add_tensor("v.position_embd.weight", normal((n_patches + 1, e), 0.02, wd))
    w.add_tensor("v.pre_ln.weight", np.ones(e, np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(e, np.float32))
    for i in range(vit.n_block):
        p = f"v.blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{proj}.weight", matrix(e, e))
            w.add_tensor(f"{p}.{proj}.bias", bias(e))
        w.add_tensor(f"{p}.ln1.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ln1.bias", np.zeros(e, np.float32))
        w.add_tensor(f"{p}.ffn_up.weight", matrix(f, e))
        w.add_tensor(f"{p}.ffn_up.bias", bias(f))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(e, f))
        w.add_tensor(f"{p}.ffn_down.bias", bias(e))
        w.add_tensor(f"{p}.ln2.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ln2.bias", np.zeros(e, np.float32))
    _finish(w)
    return path


def write_tiny_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = TextSpec()
    text_path = write_text_model(out / TEXT_FILENAME, spec)
    mmproj_path = _write_mmproj(
        out / MMPROJ_FILENAME, VITS["tiny"], spec.n_embd,
        normal=_legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
        # fan-in scaling keeps image embeddings on the scale of token embeddings, so
        # the image changes what the tiny model generates.
        weight_std=lambda fan_in: fan_in ** -0.5,
        name="ecso-edge tiny llava mmproj")
    return text_path, mmproj_path


_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H", gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q", gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    return f.read(int(_read(f, "<Q"))).decode("utf-8", "replace")


def read_scalar_metadata(path: str | pathlib.Path) -> dict[str, int | float | bool | str]:
    """The scalar key/values of a little-endian GGUF file (arrays are skipped).

    Reads only the header: gguf.GGUFReader parses every field eagerly, which takes
    seconds on a real vocabulary (tens of thousands of tokens and merges).
    """
    values: dict[str, int | float | bool | str] = {}
    with open(path, "rb") as f:
        if _read(f, "<I") != gguf.GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        # A byte-swapped (big-endian) version reads as a huge number.
        if not 2 <= _read(f, "<I") < 0x10000:
            raise ValueError(f"{path}: only little-endian GGUF v2+ is supported")
        _read(f, "<Q")  # tensor count
        for _ in range(int(_read(f, "<Q"))):
            key = _read_string(f)
            vtype = gguf.GGUFValueType(_read(f, "<I"))
            if vtype == gguf.GGUFValueType.STRING:
                values[key] = _read_string(f)
            elif vtype != gguf.GGUFValueType.ARRAY:
                values[key] = _read(f, _SCALAR_FORMATS[vtype])
            else:
                etype = gguf.GGUFValueType(_read(f, "<I"))
                count = int(_read(f, "<Q"))
                if etype == gguf.GGUFValueType.STRING:
                    for _ in range(count):
                        f.seek(int(_read(f, "<Q")), 1)
                elif etype == gguf.GGUFValueType.ARRAY:
                    raise ValueError(f"{path}: nested array in {key} is not supported")
                else:
                    f.seek(count * struct.calcsize(_SCALAR_FORMATS[etype]), 1)
    return values


def read_text_n_embd(text_model_path: str | pathlib.Path) -> int:
    meta = read_scalar_metadata(text_model_path)
    key = f"{meta.get('general.architecture')}.embedding_length"
    if key not in meta:
        raise ValueError(f"{text_model_path}: no {key} in metadata")
    return int(meta[key])


def write_projector_for(text_model_path: str | pathlib.Path, out_path: str | pathlib.Path, *,
                        vit: str = "clip-b16", image_size: int | None = None,
                        seed: int = 0) -> pathlib.Path:
    """Random-weight mlp projector whose output size matches the text model's n_embd."""
    if vit not in VITS:
        raise ValueError(f"unknown vit {vit!r}; choose from {sorted(VITS)}")
    spec = VITS[vit]
    if image_size is not None:
        if image_size <= 0 or image_size % spec.patch_size:
            raise ValueError(f"image_size must be a positive multiple of {spec.patch_size}")
        spec = replace(spec, image_size=image_size)
    n_text_embd = read_text_n_embd(text_model_path)
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_mmproj(
        out, spec, n_text_embd, normal=_fast_normal(np.random.default_rng(seed)),
        weight_std=lambda fan_in: 0.02,
        name=f"random {vit} llava mmproj for {pathlib.Path(text_model_path).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make-tiny-model",
        description="Write the tiny random LLaVA pair, or a random projector for a text GGUF.")
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--for-text-model", type=pathlib.Path, metavar="PATH",
                        help="write OUT_DIR/<stem>-mmproj-random-<vit>.gguf matching this text GGUF")
    parser.add_argument("--vit", choices=sorted(VITS), help="vision tower (default clip-b16)")
    parser.add_argument("--image-size", type=int, metavar="N")
    args = parser.parse_args(argv)

    if args.for_text_model is None:
        if args.vit is not None or args.image_size is not None:
            parser.error("--vit and --image-size need --for-text-model")
        paths: Sequence[pathlib.Path] = write_tiny_pair(args.out_dir)
    else:
        vit = args.vit or "clip-b16"
        out = args.out_dir / f"{args.for_text_model.stem}-mmproj-random-{vit}.gguf"
        try:
            paths = [write_projector_for(args.for_text_model, out, vit=vit, image_size=args.image_size)]
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
