"""MobileVLM V2: LLaVA-1.5's CLIP tower followed by a lightweight downsample projector (`ldpv2`:
an MLP, a 2x2 average pool, and a depthwise 3x3 convolution added back as a positional
encoding), with a MobileLLaMA (`llama`, Vicuna-style turns) text model. clip.cpp's graph assumes
the tower's 24x24 patch grid (336 px / 14 px), so a tiny tower keeps that grid: 96 px of 4 px
patches, pooled into 12x12 = 144 image tokens."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .llava import start_llava_projector
from .text_models import TEXT_SEED, TextSpec, write_llama_text
from .vision_tower import RandomTensors, VitSpec, add_vit_tensors

TEXT_FILENAME = "tiny-mobilevlm-text.gguf"
MMPROJ_FILENAME = "tiny-mobilevlm-mmproj.gguf"
TINY_VIT = VitSpec(image_size=96, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-5,
                   weight_dtype=np.float32)
TINY_MMPROJ_SEED = 20240325


def write_ldpv2_mmproj(path: pathlib.Path, vit: VitSpec, n_text_embd: int, normal: Normal, name: str) -> pathlib.Path:
    """In the layout of llama.cpp's legacy LLaVA converter, which MobileVLM's files come from."""
    t = RandomTensors(normal, vit.weight_dtype)
    w = start_llava_projector(path, vit, n_text_embd, "ldpv2", name, "image encoder for MobileVLM V2 (random weights)")
    w.add_tensor("mm.model.mlp.0.weight", t.matrix(n_text_embd, vit.n_embd))
    w.add_tensor("mm.model.mlp.0.bias", t.bias(n_text_embd))
    w.add_tensor("mm.model.mlp.2.weight", t.matrix(n_text_embd, n_text_embd))
    w.add_tensor("mm.model.mlp.2.bias", t.bias(n_text_embd))
    # the positional encoding generator: one 3x3 kernel per channel (ggml ne [3, 3, 1, C])
    w.add_tensor("mm.model.peg.0.weight", normal((n_text_embd, 1, 3, 3), 1 / 3, np.float16))
    w.add_tensor("mm.model.peg.0.bias", t.bias(n_text_embd))
    add_vit_tensors(w, vit, normal, lambda fan_in: fan_in ** -0.5, class_embd=True, patch_bias=False, pre_ln=True,
                    post_ln=False)
    finish(w)
    return path


def write_mobilevlm_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_llama_text(out / TEXT_FILENAME, TextSpec(), TEXT_SEED + 9, kind="MobileVLM", label="mobilevlm")
    mmproj = write_ldpv2_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TextSpec().n_embd,
                                legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)), "ecso-edge tiny mobilevlm mmproj")
    return text, mmproj
