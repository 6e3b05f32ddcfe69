"""The exceptions ecso-edge raises. The C++ core maps each of its error classes onto one of these."""

from __future__ import annotations

__all__ = [
    "EcsoError",
    "ModelLoadError",
    "ImageError",
    "ContextOverflowError",
    "CancelledError",
    "ConfigError",
    "OutputError",
    "StateFileError",
    "ResourceError",
]


class EcsoError(Exception):
    """Base class of every ecso-edge error."""


class ModelLoadError(EcsoError, OSError):
    """A model or projector file is missing, unreadable, malformed, or does not fit its pair."""


class ImageError(EcsoError, ValueError):
    """An image could not be read, is empty or truncated, is too large, or failed to encode."""


class ContextOverflowError(EcsoError):
    """A prompt (or the KV cache as a whole) does not fit the model's context window."""


class CancelledError(EcsoError):
    """The request was stopped by ``Session.cancel()`` or by a streaming callback's exception."""


class ConfigError(EcsoError, ValueError):
    """A configuration value or argument is invalid."""


class OutputError(EcsoError, OSError):
    """An output file could not be written (disk full, file size limit, permissions); what was
    written before the failure is intact."""


class StateFileError(EcsoError, OSError):
    """A session state file could not be written, or was refused on load (damaged, truncated,
    from another model or context, or another format version); the session keeps its own cache."""


class ResourceError(EcsoError, MemoryError):
    """llama.cpp could not allocate what was asked: a context (a session's, a parallel session's
    lanes together, a judge model's) or an ``n_ctx`` whose KV cache is larger than the memory there
    is. The message names the sizes asked for and what to lower (``n_ctx``, ``parallel``,
    ``n_gpu_layers``); a Session that could not be made leaves its Model usable for a smaller one."""
