"""SmolVLM: a SigLIP tower whose patches are pixel-shuffled into fewer, wider tokens and projected
(`idefics3`), with a SmolLM2 (`llama`) text model. An image is cut into tiles of image_size pixels
plus an overview, each its own media chunk of one bitmap, laid out with text tokens between them
(`<fake_token_around_image><row_1_col_1>` ... `<global-img>`) that the text model must have."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import TEXT_SEED, TextSpec, write_llama_text
from .vision_tower import VitSpec, add_vit_tensors, start_projector

TEXT_FILENAME = "tiny-smolvlm-text.gguf"
MMPROJ_FILENAME = "tiny-smolvlm-mmproj.gguf"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# SmolVLM's template as llama.cpp detects it (`<|im_start|>` with `<end_of_utterance>`, not
# ChatML): <|im_start|> opens the prompt, then "User: ...<end_of_utterance>\n" turns.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% else %}{{ message['role'] | capitalize + ': ' + message['content'] + '<end_of_utterance>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# 32 px tiles of 4 px patches: 8x8 patches, shuffled 2x2 into 16 tokens of 4x the width. Images
# are resized to a longest edge of 64 px first: a 64x64 image is 2x2 tiles and an overview.
TINY_VIT = VitSpec(image_size=32, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-6,
                   weight_dtype=np.float32)
TINY_SCALE = 2
TINY_LONGEST_EDGE = 64
_GRID = TINY_LONGEST_EDGE // TINY_VIT.image_size
# mtmd looks these up by their text; "\n\n" and the rows' tokens are SmolLM2 pieces.
CONTROL_TOKENS = ("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "\n\n",
                  *(f"<row_{r}_col_{c}>" for r in range(1, _GRID + 1) for c in range(1, _GRID + 1)))
TINY_MMPROJ_SEED = 20240319


def write_idefics3_mmproj(path: pathlib.Path, vit: VitSpec, scale: int, longest_edge: int, n_text_embd: int,
                          normal: Normal, name: str) -> pathlib.Path:
    w = start_projector(path, vit, n_text_embd, "idefics3", name, "image encoder for SmolVLM (random weights)",
                        SIGLIP_MEAN, SIGLIP_STD)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.projector.scale_factor", scale)
    w.add_uint32("clip.vision.preproc_image_size", longest_edge)
    add_vit_tensors(w, vit, normal, lambda fan_in: fan_in ** -0.5,
                    class_embd=False, patch_bias=True, pre_ln=False, post_ln=True)
    # the pixel shuffle joins scale x scale patches: the projection reads scale^2 * n_embd inputs
    n_in = vit.n_embd * scale * scale
    w.add_tensor("mm.model.fc.weight", normal((n_text_embd, n_in), n_in ** -0.5, vit.weight_dtype))
    finish(w)
    return path


def write_smolvlm_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # SmolLM2's vocabulary opens with <|im_start|> as BOS; the template writes it, so none is added
    text = write_llama_text(out / TEXT_FILENAME, TextSpec(), TEXT_SEED + 4, kind="SmolVLM", template=SMOLVLM_TEMPLATE,
                            control_tokens=CONTROL_TOKENS, add_bos=False, label="smolvlm")
    mmproj = write_idefics3_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_SCALE, TINY_LONGEST_EDGE, TextSpec().n_embd,
                                   legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
                                   "ecso-edge tiny smolvlm mmproj")
    return text, mmproj
