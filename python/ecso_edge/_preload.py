"""Makes ecso-edge and llama-cpp-python share ONE llama.cpp in a process.

The llama-cpp-python wheel stores each shared library under several names (libllama.so,
libllama.so.0, ...) as separate files, not symlinks. llama_cpp opens `llama_cpp/lib/libllama.so`
by path; our module asks for `libllama.so.0` by soname. If ours loads first, the loader maps the
`.so.0` file, and a later `import llama_cpp` maps the `.so` file again: two llama.cpp copies with
separate global state. Opening llama_cpp's files first, by the paths llama_cpp uses, makes the
module's soname lookups resolve to them, in either import order.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

__all__ = ["preload_llama_cpp_libraries"]

# The libraries llama_cpp opens by path, in its order (its _ggml, llama_cpp and mtmd_cpp modules).
_LIBRARIES = ("ggml", "llama", "mtmd")


def preload_llama_cpp_libraries() -> None:
    if not sys.platform.startswith("linux"):
        return  # macOS and Windows resolve one file per library name
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return
    lib_dir = Path(spec.origin).parent / "lib"
    for name in _LIBRARIES:
        path = lib_dir / f"lib{name}.so"
        if path.is_file():
            ctypes.CDLL(str(path))
