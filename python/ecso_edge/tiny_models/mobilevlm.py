"""MobileVLM V1 and V2: LLaVA-1.5's CLIP tower followed by a lightweight downsample projector,
with a MobileLLaMA (`llama`, Vicuna-style turns) text model. V2's `ldpv2`: an MLP, a 2x2 average
pool, and a depthwise 3x3 convolution added back as a positional encoding. V1's `ldp`: an MLP,
then two MobileNetV3 blocks (a depthwise 3x3 convolution, a channel LayerNorm, hardswish, a
squeeze-excite gate, a pointwise convolution and LayerNorm), the first with a residual, the second
of stride 2. clip.cpp's graphs assume the tower's 24x24 patch grid (336 px / 14 px), so a tiny
tower keeps that grid: 96 px of 4 px patches, made into 12x12 = 144 image tokens."""

from __future__ import annotations

import pathlib
from typing import Callable

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
V1_TEXT_FILENAME = "tiny-mobilevlm1-text.gguf"
V1_MMPROJ_FILENAME = "tiny-mobilevlm1-mmproj.gguf"
V1_MMPROJ_SEED = 20240327


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


def write_ldp_mmproj(path: pathlib.Path, vit: VitSpec, n_text_embd: int, normal: Normal, name: str) -> pathlib.Path:
    """In the layout of llama.cpp's legacy LLaVA converter, which squeezes the projector's 2-D and
    4-D tensors into f16 whatever the tower's type (a depthwise kernel [C, 1, 3, 3] becomes ggml ne
    [3, 3, C], a 1x1 convolution a matrix) and keeps its 1-D ones f32. An f32 depthwise kernel
    would meet ggml_conv_2d_dw's f16 im2col in a mul_mat that ggml's CPU backend refuses."""
    c = n_text_embd
    se = c // 4  # the squeeze-excite gate's width: a quarter of the channels, as in MobileNetV3
    t = RandomTensors(normal, np.float16)
    w = start_llava_projector(path, vit, c, "ldp", name, "image encoder for MobileVLM V1 (random weights)")
    w.add_tensor("mm.model.mlp.1.weight", t.matrix(c, vit.n_embd))
    w.add_tensor("mm.model.mlp.1.bias", t.bias(c))
    w.add_tensor("mm.model.mlp.3.weight", t.matrix(c, c))
    w.add_tensor("mm.model.mlp.3.bias", t.bias(c))
    for block in (1, 2):  # stride 1 with the residual, then stride 2
        p = f"mm.model.mb_block.{block}.block"
        w.add_tensor(f"{p}.0.0.weight", normal((c, 3, 3), 1 / 3, np.float16))  # depthwise, no bias
        w.add_tensor(f"{p}.0.1.weight", np.ones(c, np.float32))
        w.add_tensor(f"{p}.0.1.bias", t.bias(c))
        w.add_tensor(f"{p}.1.fc1.weight", t.matrix(se, c))
        w.add_tensor(f"{p}.1.fc1.bias", t.bias(se))
        w.add_tensor(f"{p}.1.fc2.weight", t.matrix(c, se))
        w.add_tensor(f"{p}.1.fc2.bias", t.bias(c))
        w.add_tensor(f"{p}.2.0.weight", t.matrix(c, c))  # pointwise, no bias
        w.add_tensor(f"{p}.2.1.weight", np.ones(c, np.float32))
        w.add_tensor(f"{p}.2.1.bias", t.bias(c))
    add_vit_tensors(w, vit, normal, lambda fan_in: fan_in ** -0.5, class_embd=True, patch_bias=False, pre_ln=True,
                    post_ln=False)
    finish(w)
    return path


def _write_pair(out_dir: str | pathlib.Path, names: tuple[str, str], text_seed: int, label: str,
                write_mmproj: Callable[[pathlib.Path, VitSpec, int, Normal, str], pathlib.Path],
                mmproj_seed: int) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_llama_text(out / names[0], TextSpec(), text_seed, kind="MobileVLM", label=label)
    mmproj = write_mmproj(out / names[1], TINY_VIT, TextSpec().n_embd,
                          legacy_normal(np.random.RandomState(mmproj_seed)), f"ecso-edge tiny {label} mmproj")
    return text, mmproj


def write_mobilevlm_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return _write_pair(out_dir, (TEXT_FILENAME, MMPROJ_FILENAME), TEXT_SEED + 9, "mobilevlm", write_ldpv2_mmproj,
                       TINY_MMPROJ_SEED)


def write_mobilevlm1_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return _write_pair(out_dir, (V1_TEXT_FILENAME, V1_MMPROJ_FILENAME), TEXT_SEED + 11, "mobilevlm1",
                       write_ldp_mmproj, V1_MMPROJ_SEED)
