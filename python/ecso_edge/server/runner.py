"""Starts the server: loads the model once, builds the app and runs it under uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import uvicorn

from .._core import EcsoConfig
from ..arguments import int_arg
from ..errors import ConfigError
from ..model import DEFAULT_ENCODER_CACHE_MIB, Model
from .app import ServerOptions, create_app
from .state_store import StateFolder

__all__ = ["serve", "is_loopback"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    text_model: Union[str, Path],
    mmproj: Union[str, Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    options: Optional[ServerOptions] = None,
    config: Optional[EcsoConfig] = None,
    n_ctx: int = 4096,
    n_gpu_layers: int = 0,
    n_threads: Optional[int] = None,
    repack: Optional[bool] = None,
    log_level: str = "info",
    judge: Optional[Callable[[], dict[str, Any]]] = None,
) -> None:
    """Load the pair and serve it until interrupted (Ctrl-C / SIGTERM stop it cleanly). Arguments
    are checked before the model is loaded: a bad one raises `ConfigError` naming it."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host must be an address or a host name, got {host!r}")
    try:
        port = int_arg("port", port, 1, 65535)
    except (TypeError, ConfigError):
        raise ConfigError(f"port must be an integer from 1 to 65535, got {port!r}") from None
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    options = options or ServerOptions(model_name=Path(text_model).stem)
    config = config if config is not None else EcsoConfig()
    if options.state_dir is not None and not config.reuse_kv:
        raise ConfigError("--state-dir keeps what the session reuses between requests, and the config's "
                          "reuse_kv is false: drop one of them")
    if not is_loopback(host) and options.api_key is None:
        print(
            f"ecso-edge serve: warning: listening on {host} without --api-key: anyone who can reach this "
            "address can use the model",
            file=sys.stderr,
        )
    # checked and held before the model loads: a wrong folder fails in a moment, not after minutes
    state_folder = StateFolder(options.state_dir) if options.state_dir is not None else None
    try:
        # --cache-ram bounds the model's own image encodings too (never above their default)
        encodings = DEFAULT_ENCODER_CACHE_MIB if options.cache_ram_mib is None else min(
            DEFAULT_ENCODER_CACHE_MIB, options.cache_ram_mib)
        model = Model(text_model, mmproj, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                      repack=repack, encoder_cache_mib=encodings)
        # `judge` loads the guard model (Session's judge_model and judge_format) after the pair
        app = create_app(model, config, options, **(judge() if judge else {}), state_folder=state_folder)
    except BaseException:
        if state_folder is not None:
            state_folder.release()
        raise
    print(f"ecso-edge serve: {options.model_name} on http://{host}:{port}/ (demo page at /)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
