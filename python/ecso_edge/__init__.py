"""ecso-edge: ECSO ("Eyes Closed, Safety On") for LLaVA-style GGUF models, on device.

    import ecso_edge
    model = ecso_edge.Model("llava-v1.5-7b.Q4_K_M.gguf", "mmproj-model-f16.gguf")
    session = ecso_edge.Session(model, ecso_edge.EcsoConfig())
    r = session.run("photo.jpg", "What should I do with this?")
    print(r.answer, r.unsafe, r.stats)
"""

from __future__ import annotations

from typing import Any

from ._preload import preload_llama_cpp_libraries

preload_llama_cpp_libraries()

from . import _core  # noqa: E402  (after the preload, by design)
from ._core import EcsoConfig, EcsoResult, StepRecord  # noqa: E402
from .errors import (
    CancelledError,
    ConfigError,
    ContextOverflowError,
    EcsoError,
    ImageError,
    ModelLoadError,
    OutputError,
    ResourceError,
    StateFileError,
)
from .model import Model, TextModel
from .session import CancelToken, Session
from .stream import EcsoStream
from .shipped import tiny_pair

__version__ = "0.1.0"

__all__ = [
    "Model",
    "TextModel",
    "Session",
    "EcsoConfig",
    "EcsoResult",
    "StepRecord",
    "EcsoStream",
    "CancelToken",
    "EcsoError",
    "ModelLoadError",
    "ImageError",
    "ContextOverflowError",
    "CancelledError",
    "ConfigError",
    "OutputError",
    "StateFileError",
    "ResourceError",
    "system_info",
    "tiny_pair",
    "__version__",
]


def system_info() -> dict[str, Any]:
    """What the loaded llama.cpp supports: ``llama_system_info`` (CPU features and backends),
    ``gpu_offload`` (bool) and ``devices`` (name, description, type, memory)."""
    return _core.system_info()
