"""Checks of the arguments a user passes to Model and Session, before they reach the C++ core:
a wrong type is a TypeError and a value out of range a ConfigError (a ValueError), each naming
the option and what it takes. Without them, pybind11 answers an int too large for the core's C
type with a TypeError that lists C++ signatures.

`int_arg` is the package's one integer range rule, and the C types' limits are named here only:
the server's request parser and ServerOptions, the command line's option types and the judges
call it and word its refusal in their own error (an HTTP 400, an argparse usage error)."""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

from .errors import ConfigError

__all__ = ["INT32_MAX", "UINT32_MAX", "INT64_MAX", "MIN_N_CTX", "MAX_CACHE_MIB", "int_arg", "optional_int_arg", "bool_arg",
           "optional_bool_arg", "callable_arg"]

INT32_MAX = 2**31 - 1  # the core's int32_t: token limits, threads, layers
UINT32_MAX = 2**32 - 1  # its uint32_t: the sampling seed
INT64_MAX = 2**63 - 1  # counts with no bound of their own, kept to what a C int64 holds
# Model(n_ctx=...)'s floor, for Model, TextModel and the command line's --n-ctx alike; the core
# refuses a smaller context too, with a message of its own
MIN_N_CTX = 16
# EcsoConfig.conversation_cache_mib's bound (the core's config check), for the server's --cache-ram
MAX_CACHE_MIB = 1 << 30


def int_arg(name: str, value: Any, lo: int, hi: int, hint: str = "") -> int:
    """`value` as an int in lo..hi; bools are refused (True is not a token count)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi} (got {number}){hint}")
    return number


def optional_int_arg(name: str, value: Any, lo: int, hi: int, hint: str = "") -> Optional[int]:
    return None if value is None else int_arg(name, value, lo, hi, hint)


def bool_arg(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def optional_bool_arg(name: str, value: Any) -> Optional[bool]:
    return None if value is None else bool_arg(name, value)


def callable_arg(name: str, value: Any) -> Optional[Callable[..., object]]:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, not {type(value).__name__}")
    return value  # type: ignore[no-any-return]
