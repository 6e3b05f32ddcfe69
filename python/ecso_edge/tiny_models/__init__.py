"""Deterministic generator of tiny GGUF pairs (a text model and its projector) with random
weights, one module per model family: the committed LLaVA-1.5 pair under models/, and pairs of
the other families the tests and benchmarks generate.

A development tool, apart from the runtime: it depends only on the stdlib, numpy and the PyPI
`gguf` package and imports nothing from ecso_edge outside this folder, so
models/make_tiny_pair.py can load it by path without the compiled package.
"""

from __future__ import annotations

import pathlib
from typing import Callable

from .gemma3 import write_gemma3_pair, write_gemma3_projector_for
from .gguf_io import read_scalar_metadata, read_text_n_embd
from .internvl import write_internvl_pair
from .llava import VITS, write_llava16_pair, write_projector_for, write_tiny_pair
from .minicpmv import write_minicpmv25_pair, write_minicpmv_pair
from .mobilevlm import write_mobilevlm1_pair, write_mobilevlm_pair
from .pixtral import write_pixtral_pair
from .qwen_vl import write_qwen2vl_pair, write_qwen25vl_pair, write_qwen3vl_pair
from .smolvlm import write_smolvlm_pair

# family -> writer of its tiny pair (text, mmproj) into a folder
FAMILIES: dict[str, Callable[[str | pathlib.Path], tuple[pathlib.Path, pathlib.Path]]] = {
    "llava15": write_tiny_pair,
    "llava16": write_llava16_pair,
    "gemma3": write_gemma3_pair,
    "qwen2.5vl": write_qwen25vl_pair,
    "smolvlm": write_smolvlm_pair,
    "qwen3vl": write_qwen3vl_pair,
    "qwen2vl": write_qwen2vl_pair,
    "pixtral": write_pixtral_pair,
    "internvl": write_internvl_pair,
    "minicpmv": write_minicpmv_pair,
    "minicpmv2.5": write_minicpmv25_pair,
    "mobilevlm": write_mobilevlm_pair,
    "mobilevlm1": write_mobilevlm1_pair,
}


def write_family_pair(family: str, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family](out_dir)


__all__ = ["FAMILIES", "VITS", "read_scalar_metadata", "read_text_n_embd", "write_family_pair",
           "write_gemma3_pair", "write_gemma3_projector_for", "write_internvl_pair", "write_llava16_pair", "write_minicpmv_pair", "write_minicpmv25_pair", "write_mobilevlm_pair", "write_mobilevlm1_pair", "write_pixtral_pair", "write_projector_for",
           "write_qwen2vl_pair", "write_qwen25vl_pair", "write_qwen3vl_pair", "write_smolvlm_pair", "write_tiny_pair"]
