"""Gemma 3: a SigLIP tower whose patches are average-pooled and projected (`gemma3`), with a
`gemma3` text model. Its image attends to itself both ways (non-causal), and the text model's
windowed layers see only the last `sliding_window` positions."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, fast_normal, finish, legacy_normal, read_text_n_embd
from .text_models import Gemma3Spec, write_gemma3_text
from .vision_tower import VitSpec, add_vit_tensors, start_projector

TEXT_FILENAME = "tiny-gemma3-text.gguf"
MMPROJ_FILENAME = "tiny-gemma3-mmproj.gguf"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# 32 px, 4 px patches: 8x8 patches, pooled 2x2 into 16 image tokens.
TINY_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
TINY_POOL = 2
# Gemma 3 4B's SigLIP-So400m: 896 px, 14 px patches, pooled 4x4 into 256 tokens.
SO400M_VIT = VitSpec(image_size=896, patch_size=14, n_embd=1152, n_ff=4304, n_block=27, n_head=16, eps=1e-6,
                     weight_dtype=np.float16, position_dtype=np.float32)
TINY_MMPROJ_SEED = 20240317


def write_gemma3_mmproj(path: pathlib.Path, vit: VitSpec, pool: int, n_text_embd: int, normal: Normal,
                        weight_std: float, name: str) -> pathlib.Path:
    w = start_projector(path, vit, n_text_embd, "gemma3", name, "image encoder for Gemma 3 (random weights)",
                        SIGLIP_MEAN, SIGLIP_STD)
    w.add_bool("clip.use_gelu", True)
    if pool != 4:  # clip.cpp's default for every Gemma 3 size
        w.add_uint32("clip.vision.projector.scale_factor", pool)
    add_vit_tensors(w, vit, normal, lambda fan_in: weight_std or fan_in ** -0.5,
                    class_embd=False, patch_bias=True, pre_ln=False, post_ln=True)
    w.add_tensor("mm.soft_emb_norm.weight", np.ones(vit.n_embd, np.float32))
    # ggml ne [n_text_embd, n_vision_embd]: clip.cpp multiplies by its transpose.
    w.add_tensor("mm.input_projection.weight",
                 normal((vit.n_embd, n_text_embd), weight_std or vit.n_embd ** -0.5, vit.weight_dtype))
    finish(w)
    return path


def write_gemma3_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_gemma3_text(out / TEXT_FILENAME)
    mmproj = write_gemma3_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_POOL, Gemma3Spec().n_embd,
                                 legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)), 0.0,
                                 "ecso-edge tiny gemma3 mmproj")
    return text, mmproj


def write_gemma3_projector_for(text_model_path: str | pathlib.Path, out_path: str | pathlib.Path, *,
                               vit: VitSpec = TINY_VIT, pool: int = TINY_POOL, seed: int = 0) -> pathlib.Path:
    """A random gemma3 projector for a real Gemma 3 text GGUF (e.g. gemma-3-270m)."""
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_gemma3_mmproj(out, vit, pool, read_text_n_embd(text_model_path),
                               fast_normal(np.random.default_rng(seed)), 0.02,
                               f"random gemma3 mmproj for {pathlib.Path(text_model_path).name}")
