"""Pixtral / Mistral Small 3.1: a ViT with 2-D rotary positions and RMS norms whose patches are
merged 2x2 (Mistral Small 3.1's patch merger) and projected (`pixtral`), with a Mistral (`llama`)
text model. An image keeps its aspect: rows of tokens separated by an [IMG_BREAK] embedding that
the projector itself outputs, then the text token [IMG_END]."""

from __future__ import annotations

import pathlib

import numpy as np

from .gguf_io import Normal, finish, legacy_normal
from .text_models import TEXT_SEED, TextSpec, write_llama_text
from .vision_tower import RandomTensors, VitSpec, start_projector

TEXT_FILENAME = "tiny-pixtral-text.gguf"
MMPROJ_FILENAME = "tiny-pixtral-mmproj.gguf"
PIXTRAL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXTRAL_STD = (0.26862954, 0.26130258, 0.27577711)

# Mistral's v7 turns, as llama.cpp detects them (`[SYSTEM_PROMPT]`): the system message in its
# own block, then [INST] ... [/INST].
MISTRAL_V7_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CONTROL_TOKENS = ("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]")

# 4 px patches merged 2x2: one token per 8x8 pixels, so a 64x64 image is 8 rows of 8 tokens and 7
# [IMG_BREAK]s between them (71 tokens).
TINY_VIT = VitSpec(image_size=64, patch_size=4, n_embd=32, n_ff=48, n_block=2, n_head=2, eps=1e-5,
                   weight_dtype=np.float32)
TINY_MERGE = 2
TINY_MMPROJ_SEED = 20240322


def write_pixtral_mmproj(path: pathlib.Path, vit: VitSpec, merge: int, n_text_embd: int, normal: Normal,
                         name: str) -> pathlib.Path:
    e, f, wd = vit.n_embd, vit.n_ff, vit.weight_dtype
    w = start_projector(path, vit, n_text_embd, "pixtral", name,
                        "image encoder for Mistral Small 3.1 / Pixtral (random weights)", PIXTRAL_MEAN, PIXTRAL_STD)
    w.add_bool("clip.use_silu", True)
    w.add_uint32("clip.vision.spatial_merge_size", merge)

    matrix = RandomTensors(normal, wd).matrix
    # no position table (2-D RoPE), no biases in the tower, RMS norms
    w.add_tensor("v.patch_embd.weight", normal((e, 3, vit.patch_size, vit.patch_size), (3 * vit.patch_size ** 2) ** -0.5, wd))
    w.add_tensor("v.pre_ln.weight", np.ones(e, np.float32))
    for i in range(vit.n_block):
        p = f"v.blk.{i}"
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{proj}.weight", matrix(e, e))
        w.add_tensor(f"{p}.ln1.weight", np.ones(e, np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", matrix(f, e))
        w.add_tensor(f"{p}.ffn_up.weight", matrix(f, e))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(e, f))
        w.add_tensor(f"{p}.ln2.weight", np.ones(e, np.float32))
    # Mistral Small 3.1's merger: RMS norm, merge x merge patches into one, back to n_embd
    w.add_tensor("mm.input_norm.weight", np.ones(e, np.float32))
    w.add_tensor("mm.patch_merger.weight", matrix(e, e * merge * merge))
    w.add_tensor("mm.1.weight", matrix(n_text_embd, e))
    w.add_tensor("mm.1.bias", normal((n_text_embd,), 0.02))
    w.add_tensor("mm.2.weight", matrix(n_text_embd, n_text_embd))
    w.add_tensor("mm.2.bias", normal((n_text_embd,), 0.02))
    w.add_tensor("v.token_embd.img_break", normal((n_text_embd,), 1.0))
    finish(w)
    return path


def write_pixtral_pair(out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = write_llama_text(out / TEXT_FILENAME, TextSpec(), TEXT_SEED + 7, kind="Mistral", template=MISTRAL_V7_TEMPLATE,
                            control_tokens=CONTROL_TOKENS, label="pixtral")
    mmproj = write_pixtral_mmproj(out / MMPROJ_FILENAME, TINY_VIT, TINY_MERGE, TextSpec().n_embd,
                                  legacy_normal(np.random.RandomState(TINY_MMPROJ_SEED)),
                                  "ecso-edge tiny pixtral mmproj")
    return text, mmproj
