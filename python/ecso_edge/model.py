"""The loaded models: Model (a text GGUF and its vision projector) and TextModel (a text-only
GGUF, a guard model that judges step 2 in place of the vision model's self-judge)."""

from __future__ import annotations

import os
from typing import Optional, Union

from . import _core
from .arguments import INT32_MAX, MIN_N_CTX, UINT32_MAX, bool_arg, int_arg, optional_bool_arg, optional_int_arg
from .errors import ConfigError
from .shipped import tiny_pair

__all__ = ["Model", "TextModel"]

PathLike = Union[str, "os.PathLike[str]"]


def _path(value: object, what: str) -> str:
    try:
        raw: Union[str, bytes] = os.fspath(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} must be a path (str or os.PathLike), not {type(value).__name__}") from None
    path = os.fsdecode(raw)
    if "\0" in path:
        raise ConfigError(f"{what} contains a NUL character")
    return path



# The image encodings a Model keeps for its sessions' conversations, by default (the C++ core's
# ModelOptions has the same value for embedders of the core; the binding always passes this one).
DEFAULT_ENCODER_CACHE_MIB = 256


class Model:
    """A LLaVA-style GGUF pair: the text model and its vision projector (``mmproj``).

    Both files are validated before llama.cpp sees them (a bad file raises ``ModelLoadError``).
    ``n_threads`` drives generation, ``n_threads_batch`` (default: the same) prompt evaluation and
    the image encoder; values above the hardware threads are clamped to them (``model.n_threads``
    tells the value in effect). ``n_batch`` is at least 4: a session keeps 4 KV sequences. ``n_gpu_layers`` (-1: all) and ``mmproj_gpu`` offload to a GPU when the installed
    llama-cpp-python was built with one (see ``ecso_edge.system_info()``). ``repack`` repacks the
    weights for the CPU's fastest kernels (llama.cpp's extra buffer types; llama-server's
    ``--no-repack`` turns them off). None: on, except on a CPU with AMX, whose kernels in the pinned
    llama.cpp crash on quantized models (``model.repack`` tells the value in effect).

    ``encoder_cache_mib`` bounds the image encodings kept for the conversations of every session
    on the model (``encoder_cache_info()``), so an image is encoded once however many
    conversations or sessions send it; 0 keeps none.

    >>> model = Model("llava-v1.5-7b.Q4_K_M.gguf", "mmproj-model-f16.gguf", n_gpu_layers=-1)
    """

    def __init__(
        self,
        text_model_path: PathLike,
        mmproj_path: PathLike,
        *,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        mmproj_gpu: bool = True,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        flash_attn: Optional[bool] = None,
        repack: Optional[bool] = None,
        seed: int = 0,
        n_batch: int = 512,
        verbose: bool = False,
        encoder_cache_mib: int = DEFAULT_ENCODER_CACHE_MIB,
    ) -> None:
        threads_hint = " (None: the default)"
        self._core = _core.Model(
            _path(text_model_path, "text_model_path"),
            _path(mmproj_path, "mmproj_path"),
            n_ctx=int_arg("n_ctx", n_ctx, MIN_N_CTX, INT32_MAX),
            n_batch=int_arg("n_batch", n_batch, 4, INT32_MAX, " (a session keeps 4 KV sequences, a batch row each)"),
            n_gpu_layers=int_arg("n_gpu_layers", n_gpu_layers, -1, INT32_MAX, " (-1 offloads every layer)"),
            mmproj_gpu=bool_arg("mmproj_gpu", mmproj_gpu),
            n_threads=optional_int_arg("n_threads", n_threads, 1, INT32_MAX, threads_hint) or 0,
            n_threads_batch=optional_int_arg("n_threads_batch", n_threads_batch, 1, INT32_MAX, threads_hint) or 0,
            flash_attn=optional_bool_arg("flash_attn", flash_attn),
            repack=optional_bool_arg("repack", repack),
            seed=int_arg("seed", seed, 0, UINT32_MAX),
            verbose=bool_arg("verbose", verbose),
            encoder_cache_mib=int_arg("encoder_cache_mib", encoder_cache_mib, 0, 1 << 30, " (0 keeps none)"),
        )

    def encoder_cache_info(self) -> dict[str, int]:
        """The image encodings this model keeps for the conversations of every session on it
        (``encoder_cache_mib``): ``entries``, ``bytes``, ``limit_bytes``, ``hits``, ``misses``,
        ``evictions``. A conversation that sends an image any session on this model has already
        encoded reuses the encoding (``r.stats["image_encodes"]`` 0)."""
        return self._core.encoder_cache_info()

    def clear_encoder_cache(self) -> None:
        """Drop the image encodings kept for every session on this model."""
        self._core.clear_encoder_cache()

    @classmethod
    def tiny(cls, **options: object) -> "Model":
        """The tiny random-weight pair shipped in the package (for demos and tests)."""
        text, mmproj = tiny_pair()
        return cls(text, mmproj, **options)  # type: ignore[arg-type]

    @property
    def text_model_path(self) -> str:
        return self._core.text_model_path

    @property
    def mmproj_path(self) -> str:
        return self._core.mmproj_path

    @property
    def n_ctx(self) -> int:
        return self._core.n_ctx

    @property
    def n_embd(self) -> int:
        return self._core.n_embd

    @property
    def n_threads(self) -> int:
        """Threads for generation."""
        return self._core.n_threads

    @property
    def n_threads_batch(self) -> int:
        """Threads for prompt evaluation and the image encoder."""
        return self._core.n_threads_batch

    @property
    def projector_type(self) -> str:
        return self._core.projector_type

    @property
    def repack(self) -> bool:
        """Whether the weights were repacked into the CPU backend's extra buffer types."""
        return self._core.repack

    @property
    def projector_check(self) -> str:
        """How the projector was made safe to load: 'tensor table', 'child process' or
        'child process (cached)' (docs/projector-validation.md)."""
        return self._core.projector_check

    @property
    def chat_template(self) -> Optional[str]:
        """The chat template stored in the text GGUF, or None."""
        return self._core.chat_template

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        return self._core.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int) -> bytes:
        return self._core.token_bytes(token)

    def __repr__(self) -> str:
        return f"Model({self.text_model_path!r}, {self.mmproj_path!r}, n_ctx={self.n_ctx})"


class TextModel:
    """A text-only GGUF: a guard model (Llama Guard 3, Qwen3Guard-Gen, ShieldGemma, Granite
    Guardian, or any instruct model with the ``yes-no`` format) that judges step 2 in place of the
    vision model's self-judge: ``Session(model, judge_model=guard, judge_format="llama-guard-3")``.
    It has a context of its own (``n_ctx`` positions: the guard's prompt, the query, the answer
    and its verdict) and keeps its prompt format's fixed instruction in it between calls. The
    options mean what they mean for ``Model``; ``chat_template`` (a llama.cpp built-in name such
    as ``"gemma"``) frames the prompts of a GGUF that carries no template.

    >>> guard = TextModel("Llama-Guard-3-1B.Q8_0.gguf", n_ctx=4096)
    """

    def __init__(
        self,
        path: PathLike,
        *,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        flash_attn: Optional[bool] = None,
        repack: Optional[bool] = None,
        n_batch: int = 512,
        verbose: bool = False,
        chat_template: Optional[str] = None,
    ) -> None:
        threads_hint = " (None: the default)"
        if chat_template is not None and (not isinstance(chat_template, str) or not chat_template):
            raise ConfigError("chat_template must be None (the GGUF's own) or one of llama.cpp's built-in template "
                              f"names, got {chat_template!r}")
        self._core = _core.TextModel(
            _path(path, "path"),
            n_ctx=int_arg("n_ctx", n_ctx, MIN_N_CTX, INT32_MAX),
            n_batch=int_arg("n_batch", n_batch, 4, INT32_MAX),
            n_gpu_layers=int_arg("n_gpu_layers", n_gpu_layers, -1, INT32_MAX, " (-1 offloads every layer)"),
            n_threads=optional_int_arg("n_threads", n_threads, 1, INT32_MAX, threads_hint) or 0,
            n_threads_batch=optional_int_arg("n_threads_batch", n_threads_batch, 1, INT32_MAX, threads_hint) or 0,
            flash_attn=optional_bool_arg("flash_attn", flash_attn),
            repack=optional_bool_arg("repack", repack),
            verbose=bool_arg("verbose", verbose),
            chat_template=chat_template or "",
        )

    @property
    def path(self) -> str:
        return self._core.path

    @property
    def architecture(self) -> str:
        return self._core.architecture

    @property
    def n_ctx(self) -> int:
        return self._core.n_ctx

    @property
    def n_threads(self) -> int:
        return self._core.n_threads

    @property
    def chat_template(self) -> Optional[str]:
        """The chat template stored in the GGUF, or None."""
        return self._core.chat_template

    def __repr__(self) -> str:
        return f"TextModel({self.path!r}, n_ctx={self.n_ctx})"
