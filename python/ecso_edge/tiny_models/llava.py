"""LLaVA projectors: the committed tiny LLaVA-1.5 pair, its LLaVA-1.6 variant (grid pinpoints:
an image becomes an overview and slices), and random CLIP projectors sized for a real text GGUF
(for benchmarks without downloading a vision model)."""

from __future__ import annotations

import pathlib
from dataclasses import replace
from typing import Callable, Sequence

import gguf
import numpy as np

from .gguf_io import Normal, fast_normal, finish, legacy_normal, read_text_n_embd
from .text_models import TextSpec, write_llama_text
from .vision_tower import VitSpec, add_vit_keys, add_vit_tensors

TEXT_FILENAME = "tiny-llava-text.gguf"
MMPROJ_FILENAME = "tiny-llava-mmproj.gguf"

# OpenAI CLIP preprocessing, as in real LLaVA-1.5 projectors.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

VITS: dict[str, VitSpec] = {
    "tiny": VitSpec(image_size=32, patch_size=8, n_embd=32, n_ff=48, n_block=2,
                    n_head=2, eps=1e-5, weight_dtype=np.float32),
    "clip-b16": VitSpec(image_size=224, patch_size=16, n_embd=768, n_ff=3072, n_block=12,
                        n_head=12, eps=1e-5, weight_dtype=np.float16),
}

TINY_MMPROJ_SEED = 20240315
# LLaVA-1.6's resolutions for the tiny 32 px tiles: a 64x64 image is an overview and 4 slices.
TINY_GRID_PINPOINTS = (32, 64, 64, 32, 64, 64)


def start_llava_projector(path: pathlib.Path, vit: VitSpec, n_text_embd: int, projector_type: str, name: str,
                          description: str) -> gguf.GGUFWriter:
    """A writer with the keys of llama.cpp's legacy LLaVA converter (LLaVA, MobileVLM), in its order."""
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_description(description)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if vit.weight_dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", projector_type)
    add_vit_keys(w, vit, n_text_embd, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)
    # OpenAI CLIP uses quick_gelu, so real llava-1.5 files say false here.
    w.add_bool("clip.use_gelu", False)
    return w


def write_mmproj(path: pathlib.Path, vit: VitSpec, n_text_embd: int, normal: Normal,
                 weight_std: Callable[[int], float], name: str,
                 grid_pinpoints: Sequence[int] = ()) -> pathlib.Path:
    """A LLaVA mlp projector in the layout of llama.cpp's legacy converter."""
    wd = vit.weight_dtype
    w = start_llava_projector(path, vit, n_text_embd, "mlp", name, "image encoder for LLaVA (random weights)")
    if grid_pinpoints:
        w.add_array("clip.vision.image_grid_pinpoints", list(grid_pinpoints))

    w.add_tensor("mm.0.weight", normal((n_text_embd, vit.n_embd), weight_std(vit.n_embd), wd))
    w.add_tensor("mm.0.bias", normal((n_text_embd,), 0.02))
    w.add_tensor("mm.2.weight", normal((n_text_embd, n_text_embd), weight_std(n_text_embd), wd))
    w.add_tensor("mm.2.bias", normal((n_text_embd,), 0.02))
    # CLIP's patch embedding is a conv without bias.
    add_vit_tensors(w, vit, normal, weight_std, class_embd=True, patch_bias=False, pre_ln=True, post_ln=False)
    finish(w)
    return path


def _tiny_mmproj(path: pathlib.Path, grid_pinpoints: Sequence[int] = ()) -> pathlib.Path:
    return write_mmproj(
        path, VITS["tiny"], TextSpec().n_embd,
        normal=legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
        # fan-in scaling keeps image embeddings on the scale of token embeddings, so
        # the image changes what the tiny model generates.
        weight_std=lambda fan_in: fan_in ** -0.5,
        name="ecso-edge tiny llava mmproj", grid_pinpoints=grid_pinpoints)


def write_tiny_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The LLaVA-1.5 pair committed under models/."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_llama_text(out / TEXT_FILENAME), _tiny_mmproj(out / MMPROJ_FILENAME)


def write_llava16_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return (write_llama_text(out / TEXT_FILENAME),
            _tiny_mmproj(out / "tiny-llava16-mmproj.gguf", TINY_GRID_PINPOINTS))


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
    return write_mmproj(
        out, spec, n_text_embd, normal=fast_normal(np.random.default_rng(seed)),
        weight_std=lambda fan_in: 0.02,
        name=f"random {vit} llava mmproj for {pathlib.Path(text_model_path).name}")
