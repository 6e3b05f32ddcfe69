"""The ViT tower every tiny projector carries (CLIP for LLaVA, SigLIP for Gemma 3): its
hyperparameter keys and its tensors, in the layout of llama.cpp's converters."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Callable, Sequence

import gguf
import numpy as np

from .gguf_io import Normal


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
    # SigLIP adds its position embeddings to f32 activations, which ggml's CPU add refuses in
    # f16: llama.cpp's converter keeps them f32 (CLIP reads rows of them, any type works).
    position_dtype: type[np.floating] | None = None  # None: weight_dtype

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def add_vit_keys(w: gguf.GGUFWriter, vit: VitSpec, projection_dim: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
    w.add_uint32("clip.vision.image_size", vit.image_size)
    w.add_uint32("clip.vision.patch_size", vit.patch_size)
    w.add_uint32("clip.vision.embedding_length", vit.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", vit.n_ff)
    w.add_uint32("clip.vision.projection_dim", projection_dim)
    w.add_uint32("clip.vision.attention.head_count", vit.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vit.eps)
    w.add_uint32("clip.vision.block_count", vit.n_block)
    w.add_array("clip.vision.image_mean", list(mean))
    w.add_array("clip.vision.image_std", list(std))


def start_projector(path: pathlib.Path, vit: VitSpec, n_text_embd: int, projector_type: str, name: str,
                    description: str, mean: Sequence[float], std: Sequence[float]) -> gguf.GGUFWriter:
    """A projector's writer with the keys every family's file opens with, in this order."""
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_description(description)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if vit.weight_dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", projector_type)
    add_vit_keys(w, vit, n_text_embd, mean, std)
    return w


@dataclass(frozen=True)
class RandomTensors:
    """Matrices scaled by their fan-in in the tower's dtype, and small f32 biases."""
    normal: Normal
    dtype: type[np.floating]

    def matrix(self, n_out: int, n_in: int) -> np.ndarray:
        return self.normal((n_out, n_in), n_in ** -0.5, self.dtype)

    def bias(self, n: int) -> np.ndarray:
        return self.normal((n,), 0.02)


def add_vit_tensors(w: gguf.GGUFWriter, vit: VitSpec, normal: Normal, weight_std: Callable[[int], float], *,
                    class_embd: bool, patch_bias: bool, pre_ln: bool, post_ln: bool,
                    position_rows: int | None = None) -> None:
    """`weight_std(fan_in)` picks the std of each matrix; LayerNorms are weight 1, bias 0.
    `position_rows`: the position table's rows when it is not one per patch (MiniCPM-V: a 70x70
    grid of buckets). numpy shapes are ggml ne reversed."""
    e, f, wd = vit.n_embd, vit.n_ff, vit.weight_dtype

    def matrix(n_out: int, n_in: int) -> np.ndarray:
        return normal((n_out, n_in), weight_std(n_in), wd)

    def bias(n: int) -> np.ndarray:
        return normal((n,), 0.02)

    if class_embd:
        w.add_tensor("v.class_embd", normal((e,), 0.02))
    w.add_tensor("v.patch_embd.weight",
                 normal((e, 3, vit.patch_size, vit.patch_size), weight_std(3 * vit.patch_size ** 2), wd))
    if patch_bias:
        w.add_tensor("v.patch_embd.bias", bias(e))
    rows = position_rows if position_rows is not None else vit.n_patches + (1 if class_embd else 0)
    w.add_tensor("v.position_embd.weight", normal((rows, e), 0.02, vit.position_dtype or wd))
    if pre_ln:
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
    if post_ln:
        w.add_tensor("v.post_ln.weight", np.ones(e, np.float32))
        w.add_tensor("v.post_ln.bias", np.zeros(e, np.float32))
