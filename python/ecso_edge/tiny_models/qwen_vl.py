"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: a ViT with 2-D rotary positions and a merger that joins 2x2 patches
into one image token. Qwen2-VL (`qwen2vl_merger`, `qwen2vl` text) is the plain one; Qwen2.5-VL
(`qwen2.5vl_merger`, the same text arch) has windowed attention in most blocks; Qwen3-VL (`qwen3vl_merger`, `qwen3vl` text) adds learned positions and "deepstack"
features of early vision layers, which the first text layers add in. An image is one chunk of
rows x cols tokens that occupies max(rows, cols) positions (M-RoPE): the text after it continues
from there, not after the token count."""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import TEXT_SEED, QwenVlSpec, write_qwen2vl_text, write_qwen3vl_text
from .vision_tower import RandomTensors, VitSpec, start_projector

TEXT_FILENAME = "tiny-qwen2.5vl-text.gguf"
MMPROJ_FILENAME = "tiny-qwen2.5vl-mmproj.gguf"
QWEN2_TEXT_FILENAME = "tiny-qwen2vl-text.gguf"
QWEN2_MMPROJ_FILENAME = "tiny-qwen2vl-mmproj.gguf"
QWEN3_TEXT_FILENAME = "tiny-qwen3vl-text.gguf"
QWEN3_MMPROJ_FILENAME = "tiny-qwen3vl-mmproj.gguf"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# 4 px patches merged 2x2: one image token per 8x8 pixels, so a 64x64 image is 8x8 tokens over 8
# positions. n_ff differs from n_embd: clip.cpp takes an ffn_down of n_embd inputs for an old,
# swapped export.
TINY_VIT = VitSpec(image_size=64, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
# Every n-th block attends to the whole image, the others within windows (Qwen2.5-VL: 8 of 32).
TINY_WINDOW_PATTERN = 2
TINY_MMPROJ_SEED = 20240318
# Qwen3-VL: 32 px position table (8x8 patches, resized to the image's grid), the deepstack
# feature taken after block 0 (Qwen3-VL-2B: after blocks 5, 11 and 17 of 24).
QWEN3_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                    weight_dtype=np.float32)
QWEN3_DEEPSTACK_BLOCKS = (0,)
QWEN3_MMPROJ_SEED = 20240320
QWEN2_MMPROJ_SEED = 20240321


def _add_merger_mlp(w: gguf.GGUFWriter, t: RandomTensors, e: int, n_text_embd: int) -> None:
    """The merger's MLP over each 2x2 group of patches, concatenated (4 x e inputs)."""
    w.add_tensor("mm.0.weight", t.matrix(4 * e, 4 * e))
    w.add_tensor("mm.0.bias", t.bias(4 * e))
    w.add_tensor("mm.2.weight", t.matrix(n_text_embd, 4 * e))
    w.add_tensor("mm.2.bias", t.bias(n_text_embd))


def write_qwen2x_mmproj(path: pathlib.Path, vit: VitSpec, window_pattern: int, n_text_embd: int, normal: Normal,
                        name: str, *, qwen25: bool) -> pathlib.Path:
    """Qwen2.5-VL (`qwen25`: RMS norms, a SiLU-gated FFN, windowed blocks) or Qwen2-VL (LayerNorms,
    a quick-GELU FFN, every block global)."""
    e, f, wd = vit.n_embd, vit.n_ff, vit.weight_dtype
    w = start_projector(path, vit, n_text_embd, "qwen2.5vl_merger" if qwen25 else "qwen2vl_merger", name,
                        f"image encoder for {'Qwen2.5-VL' if qwen25 else 'Qwen2-VL'} (random weights)", CLIP_MEAN, CLIP_STD)
    if qwen25:
        w.add_bool("clip.use_silu", True)
        w.add_uint32("clip.vision.n_wa_pattern", window_pattern)

    t = RandomTensors(normal, wd)
    matrix, bias = t.matrix, t.bias

    def norm(prefix: str) -> None:
        w.add_tensor(f"{prefix}.weight", np.ones(e, np.float32))
        if not qwen25:  # RMSNorm has no bias
            w.add_tensor(f"{prefix}.bias", np.zeros(e, np.float32))

    # Two frames' kernels of the temporal patch (a still image uses both on the same pixels);
    # no position table: positions are rotary.
    for name_ in ("v.patch_embd.weight", "v.patch_embd.weight.1"):
        w.add_tensor(name_, normal((e, 3, vit.patch_size, vit.patch_size), (3 * vit.patch_size ** 2) ** -0.5, wd))
    for i in range(vit.n_block):
        p = f"v.blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{proj}.weight", matrix(e, e))
            w.add_tensor(f"{p}.{proj}.bias", bias(e))
        norm(f"{p}.ln1")
        if qwen25:
            w.add_tensor(f"{p}.ffn_gate.weight", matrix(f, e))
            w.add_tensor(f"{p}.ffn_gate.bias", bias(f))
        w.add_tensor(f"{p}.ffn_up.weight", matrix(f, e))
        w.add_tensor(f"{p}.ffn_up.bias", bias(f))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(e, f))
        w.add_tensor(f"{p}.ffn_down.bias", bias(e))
        norm(f"{p}.ln2")
    # The merger: a norm per patch, then an MLP over each 2x2 group's concatenation.
    norm("v.post_ln")
    _add_merger_mlp(w, t, e, n_text_embd)
    finish(w)
    return path


def write_qwen25vl_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_qwen2vl_text(out / TEXT_FILENAME)
    mmproj = write_qwen2x_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_WINDOW_PATTERN, QwenVlSpec().n_embd,
                                 legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
                                 "ecso-edge tiny qwen2.5vl mmproj", qwen25=True)
    return text, mmproj


def write_qwen2vl_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_qwen2vl_text(out / QWEN2_TEXT_FILENAME, seed=TEXT_SEED + 6)
    mmproj = write_qwen2x_mmproj(out / QWEN2_MMPROJ_FILENAME, TINY_VIT, 0, QwenVlSpec().n_embd,
                                 legacy_normal(np.random.RandomState(QWEN2_MMPROJ_SEED)),
                                 "ecso-edge tiny qwen2vl mmproj", qwen25=False)
    return text, mmproj


def write_qwen3vl_mmproj(path: pathlib.Path, vit: VitSpec, deepstack_blocks: tuple[int, ...], n_text_embd: int,
                         normal: Normal, name: str) -> pathlib.Path:
    e, f, wd = vit.n_embd, vit.n_ff, vit.weight_dtype
    w = start_projector(path, vit, n_text_embd, "qwen3vl_merger", name, "image encoder for Qwen3-VL (random weights)",
                        CLIP_MEAN, CLIP_STD)
    w.add_bool("clip.use_gelu", True)

    t = RandomTensors(normal, wd)
    matrix, bias = t.matrix, t.bias

    for name_ in ("v.patch_embd.weight", "v.patch_embd.weight.1"):
        w.add_tensor(name_, normal((e, 3, vit.patch_size, vit.patch_size), (3 * vit.patch_size ** 2) ** -0.5, wd))
    w.add_tensor("v.patch_embd.bias", bias(e))
    w.add_tensor("v.position_embd.weight", normal((vit.n_patches, e), 0.02, np.float32))
    for i in range(vit.n_block):
        p = f"v.blk.{i}"
        w.add_tensor(f"{p}.attn_qkv.weight", matrix(3 * e, e))  # q, k and v in one matrix
        w.add_tensor(f"{p}.attn_qkv.bias", bias(3 * e))
        w.add_tensor(f"{p}.attn_out.weight", matrix(e, e))
        w.add_tensor(f"{p}.attn_out.bias", bias(e))
        for ln in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{ln}.weight", np.ones(e, np.float32))
            w.add_tensor(f"{p}.{ln}.bias", np.zeros(e, np.float32))
        w.add_tensor(f"{p}.ffn_up.weight", matrix(f, e))
        w.add_tensor(f"{p}.ffn_up.bias", bias(f))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(e, f))
        w.add_tensor(f"{p}.ffn_down.bias", bias(e))
    for i in deepstack_blocks:
        # each deepstack feature: the block's output merged 2x2, normed and projected to the text width
        p = f"v.deepstack.{i}"
        w.add_tensor(f"{p}.norm.weight", np.ones(4 * e, np.float32))
        w.add_tensor(f"{p}.norm.bias", np.zeros(4 * e, np.float32))
        w.add_tensor(f"{p}.fc1.weight", matrix(4 * e, 4 * e))
        w.add_tensor(f"{p}.fc1.bias", bias(4 * e))
        w.add_tensor(f"{p}.fc2.weight", matrix(n_text_embd, 4 * e))
        w.add_tensor(f"{p}.fc2.bias", bias(n_text_embd))
    w.add_tensor("v.post_ln.weight", np.ones(e, np.float32))
    w.add_tensor("v.post_ln.bias", np.zeros(e, np.float32))
    _add_merger_mlp(w, t, e, n_text_embd)
    finish(w)
    return path


def write_qwen3vl_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_qwen3vl_text(out / QWEN3_TEXT_FILENAME)
    mmproj = write_qwen3vl_mmproj(out / QWEN3_MMPROJ_FILENAME, QWEN3_VIT, QWEN3_DEEPSTACK_BLOCKS, QwenVlSpec().n_embd,
                                  legacy_normal(np.random.RandomState(QWEN3_MMPROJ_SEED)),
                                  "ecso-edge tiny qwen3vl mmproj")
    return text, mmproj
