"""Files shipped inside the installed package: the tiny test pair and the C++ self-test program."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

__all__ = ["tiny_pair", "selftest_program"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def tiny_pair() -> tuple[Path, Path]:
    """Paths of the shipped tiny LLaVA-style pair: (text model, mmproj)."""
    text = _PACKAGE_DIR / "models" / "tiny-llava-text.gguf"
    mmproj = _PACKAGE_DIR / "models" / "tiny-llava-mmproj.gguf"
    for path in (text, mmproj):
        if not path.is_file():
            raise ModelLoadError(
                f"the shipped tiny model '{path}' is missing: reinstall ecso-edge with `pip install .` "
                "(an editable or source-tree import has no model files)"
            )
    return text, mmproj


def selftest_program() -> Path:
    """Path of ``ecso-selftest``, the C++ program that runs ECSO without Python."""
    return _PACKAGE_DIR / "bin" / "ecso-selftest"
