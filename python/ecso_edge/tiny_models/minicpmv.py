"""MiniCPM-V 2.6 and MiniCPM-Llama3-V 2.5: a SigLIP tower whose patches a resampler
(cross-attention from a fixed set of learned queries) turns into query_num tokens per slice
(`resampler`), with a Qwen2 (`qwen2`, 2.6) or Llama 3 (`llama`, 2.5) text model. An image is an
overview plus LLaVA-UHD slices: several media chunks of one bitmap, rows ended by "\\n". mtmd picks
the layout from clip.minicpmv_version: 3 (2.6) writes <image> overview </image><slice> slice
</slice>..., 2 (2.5) nests the slices' own <image> ... </image> inside one <slice> ... </slice>."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import (LLAMA3_CONTROL_TOKENS, LLAMA3_TEMPLATE, QWEN_VL_CONTROL_TOKENS, TEXT_SEED, QwenVlSpec,
                          TextSpec, write_llama_text, write_qwen2_text)
from .vision_tower import RandomTensors, VitSpec, add_vit_tensors, start_projector

TEXT_FILENAME = "tiny-minicpmv-text.gguf"
MMPROJ_FILENAME = "tiny-minicpmv-mmproj.gguf"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# mtmd looks the image and slice markers up by their text in the text model's vocabulary
IMAGE_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")
CONTROL_TOKENS = (*QWEN_VL_CONTROL_TOKENS[:2], *IMAGE_TOKENS)

# clip.cpp's resampler has heads of 128 dimensions: the text model is 128 wide (MiniCPM-V 2.6's
# Qwen2-7B: 3584; 2.5's Llama-3-8B: 4096).
TEXT_SPEC = QwenVlSpec(n_embd=128, n_head=4, n_head_kv=2, n_ff=256)
V25_TEXT_FILENAME = "tiny-minicpmv25-text.gguf"
V25_MMPROJ_FILENAME = "tiny-minicpmv25-mmproj.gguf"
V25_TEXT_SPEC = TextSpec(n_embd=128, n_head=4, n_ff=256, rope_freq_base=500_000.0)  # Llama 3's RoPE base
# 32 px slices of 4 px patches; 16 queries per slice (2.6: 64, 2.5: 96); ViT positions come from a 70x70
# grid of buckets whatever the slice's size.
TINY_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
TINY_QUERIES = 16
POSITION_BUCKETS = 70
MINICPMV_VERSION = 3  # 2.6
V25_MINICPMV_VERSION = 2
TINY_MMPROJ_SEED = 20240324
V25_MMPROJ_SEED = 20240326


def write_minicpmv_mmproj(path: pathlib.Path, vit: VitSpec, n_queries: int, n_text_embd: int, normal: Normal,
                          name: str, version: int = MINICPMV_VERSION,
                          model: str = "MiniCPM-V 2.6") -> pathlib.Path:
    """The same tensors in every version: clip.cpp's graph does not depend on it, mtmd's layout does."""
    e, wd, d = vit.n_embd, vit.weight_dtype, n_text_embd
    w = start_projector(path, vit, n_text_embd, "resampler", name, f"image encoder for {model} (random weights)",
                        SIGLIP_MEAN, SIGLIP_STD)
    w.add_int32("clip.minicpmv_version", version)
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


def write_minicpmv25_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_llama_text(out / V25_TEXT_FILENAME, V25_TEXT_SPEC, TEXT_SEED + 10, kind="MiniCPM-Llama3-V 2.5",
                            template=LLAMA3_TEMPLATE, control_tokens=(*LLAMA3_CONTROL_TOKENS, *IMAGE_TOKENS),
                            label="minicpmv25")
    mmproj = write_minicpmv_mmproj(out / V25_MMPROJ_FILENAME, TINY_VIT, TINY_QUERIES, V25_TEXT_SPEC.n_embd,
                                   legacy_normal(np.random.RandomState(V25_MMPROJ_SEED)),
                                   "ecso-edge tiny minicpmv25 mmproj", V25_MINICPMV_VERSION, "MiniCPM-Llama3-V 2.5")
    return text, mmproj
