"""InternVL: a CLIP-style InternViT with a class token and layer scales, whose patches are
pixel-shuffled 2x2 and projected by a normed MLP (`internvl`), with a Qwen2 (`qwen2`) text model
(InternVL 3's 1B and 2B). An image is cut into tiles of image_size pixels chosen by aspect ratio,
then a thumbnail: several media chunks of one bitmap, the tiles first, inside <img> ... </img>."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import QWEN_VL_CONTROL_TOKENS, QwenVlSpec, write_qwen2_text
from .vision_tower import VitSpec, add_vit_tensors, start_projector

TEXT_FILENAME = "tiny-internvl-text.gguf"
MMPROJ_FILENAME = "tiny-internvl-mmproj.gguf"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTROL_TOKENS = (*QWEN_VL_CONTROL_TOKENS[:2], "<img>", "</img>")

# 32 px tiles of 4 px patches: 8x8 patches, shuffled 2x2 into 16 tokens; at most 4 tiles.
TINY_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
TINY_SCALE = 2
TINY_MAX_TILES = 4
TINY_MMPROJ_SEED = 20240323


def write_internvl_mmproj(path: pathlib.Path, vit: VitSpec, scale: int, max_tiles: int, n_text_embd: int,
                          normal: Normal, name: str) -> pathlib.Path:
    e, wd = vit.n_embd, vit.weight_dtype
    w = start_projector(path, vit, n_text_embd, "internvl", name, "image encoder for InternVL (random weights)",
                        IMAGENET_MEAN, IMAGENET_STD)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.projector.scale_factor", scale)
    w.add_uint32("clip.vision.preproc_min_tiles", 1)
    w.add_uint32("clip.vision.preproc_max_tiles", max_tiles)
    add_vit_tensors(w, vit, normal, lambda fan_in: fan_in ** -0.5,
                    class_embd=True, patch_bias=True, pre_ln=False, post_ln=False)
    for i in range(vit.n_block):  # InternViT scales each residual branch
        w.add_tensor(f"v.blk.{i}.ls1.weight", np.full(e, 0.5, np.float32))
        w.add_tensor(f"v.blk.{i}.ls2.weight", np.full(e, 0.5, np.float32))
    n_in = e * scale * scale
    w.add_tensor("mm.model.mlp.0.weight", np.ones(n_in, np.float32))  # LayerNorm of the shuffled patches
    w.add_tensor("mm.model.mlp.0.bias", np.zeros(n_in, np.float32))
    w.add_tensor("mm.model.mlp.1.weight", normal((n_text_embd, n_in), n_in ** -0.5, wd))
    w.add_tensor("mm.model.mlp.1.bias", normal((n_text_embd,), 0.02))
    w.add_tensor("mm.model.mlp.3.weight", normal((n_text_embd, n_text_embd), n_text_embd ** -0.5, wd))
    w.add_tensor("mm.model.mlp.3.bias", normal((n_text_embd,), 0.02))
    finish(w)
    return path


def write_internvl_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_qwen2_text(out / TEXT_FILENAME, control_tokens=CONTROL_TOKENS)
    mmproj = write_internvl_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_SCALE, TINY_MAX_TILES, QwenVlSpec().n_embd,
                                   legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
                                   "ecso-edge tiny internvl mmproj")
    return text, mmproj
