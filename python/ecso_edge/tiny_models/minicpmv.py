"""MiniCPM-V 2.6: a SigLIP tower whose patches a resampler (cross-attention from a fixed set of
learned queries) turns into query_num tokens per slice (`resampler`, clip.minicpmv_version 3), with
a Qwen2 (`qwen2`) text model. An image is an overview plus LLaVA-UHD slices: several media chunks
of one bitmap laid out as <image> overview </image><slice> slice </slice>... with rows ended by
"\\n"."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import QWEN_VL_CONTROL_TOKENS, QwenVlSpec, write_qwen2_text
from .vision_tower import RandomTensors, VitSpec, add_vit_tensors, start_projector

TEXT_FILENAME = "tiny-minicpmv-text.gguf"
MMPROJ_FILENAME = "tiny-minicpmv-mmproj.gguf"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CONTROL_TOKENS = (*QWEN_VL_CONTROL_TOKENS[:2], "<image>", "</image>", "<slice>", "</slice>")

# clip.cpp's resampler has heads of 128 dimensions: the text model is 128 wide (MiniCPM-V 2.6's
# Qwen2-7B: 3584).
TEXT_SPEC = QwenVlSpec(n_embd=128, n_head=4, n_head_kv=2, n_ff=256)
# 32 px slices of 4 px patches; 16 queries per slice (2.6: 64); ViT positions come from a 70x70
# grid of buckets whatever the slice's size.
TINY_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
TINY_QUERIES = 16
POSITION_BUCKETS = 70
MINICPMV_VERSION = 3  # 2.6
TINY_MMPROJ_SEED = 20240324


def write_minicpmv_mmproj(path: pathlib.Path, vit: VitSpec, n_queries: int, n_text_embd: int, normal: Normal,
                          name: str) -> pathlib.Path:
    e, wd, d = vit.n_embd, vit.weight_dtype, n_text_embd
    w = start_projector(path, vit, n_text_embd, "resampler", name, "image encoder for MiniCPM-V 2.6 (random weights)",
                        SIGLIP_MEAN, SIGLIP_STD)
    w.add_int32("clip.minicpmv_version", MINICPMV_VERSION)
    w.add_uint32("clip.minicpmv_query_num", n_queries)
    w.add_bool("clip.use_gelu", True)
    add_vit_tensors(w, vit, normal, lambda fan_in: fan_in ** -0.5, class_embd=False, patch_bias=True,
                    pre_ln=False, post_ln=True, position_rows=POSITION_BUCKETS * POSITION_BUCKETS)

    matrix = RandomTensors(normal, wd).matrix
    # the resampler: the queries attend to the tower's patches (keys with 2-D sinusoidal positions)
    w.add_tensor("resampler.query", normal((n_queries, d), 0.5))
    w.add_tensor("resampler.pos_embed_k", normal((n_queries, d), 0.02))  # loaded, not used by the graph
    w.add_tensor("resampler.kv.weight", matrix(d, e))
    for proj in ("q", "k", "v", "out"):
        w.add_tensor(f"resampler.attn.{proj}.weight", matrix(d, d))
        w.add_tensor(f"resampler.attn.{proj}.bias", normal((d,), 0.02))
    for ln in ("q", "kv", "post"):
        w.add_tensor(f"resampler.ln_{ln}.weight", np.ones(d, np.float32))
        w.add_tensor(f"resampler.ln_{ln}.bias", np.zeros(d, np.float32))
    w.add_tensor("resampler.proj.weight", matrix(d, d))
    finish(w)
    return path


def write_minicpmv_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_qwen2_text(out / TEXT_FILENAME, TEXT_SPEC, control_tokens=CONTROL_TOKENS)
    mmproj = write_minicpmv_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_QUERIES, TEXT_SPEC.n_embd,
                                   legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
                                   "ecso-edge tiny minicpmv mmproj")
    return text, mmproj
