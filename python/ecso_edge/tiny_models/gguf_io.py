"""GGUF plumbing of the tiny-model generator: random draws, writing a file, reading a header."""

from __future__ import annotations

import pathlib
import struct
from typing import Any, BinaryIO, Protocol

import gguf
import numpy as np


class Normal(Protocol):
    def __call__(self, shape: tuple[int, ...], std: float,
                 dtype: type[np.floating] = np.float32) -> np.ndarray: ...


def legacy_normal(rng: np.random.RandomState) -> Normal:
    # RandomState's stream is frozen across numpy versions, so `--check` stays valid.
    def normal(shape: tuple[int, ...], std: float, dtype: type[np.floating] = np.float32) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(dtype)
    return normal


def fast_normal(rng: np.random.Generator) -> Normal:
    # Drawing float32 in cache-sized chunks straight into the target dtype halves the
    # time of a full-array draw and cast for a ViT-B (85M weights).
    chunk = np.empty(1 << 20, np.float32)

    def normal(shape: tuple[int, ...], std: float, dtype: type[np.floating] = np.float32) -> np.ndarray:
        out = np.empty(shape, dtype)
        flat = out.reshape(-1)
        for start in range(0, flat.size, chunk.size):
            part = chunk[:min(chunk.size, flat.size - start)]
            rng.standard_normal(out=part, dtype=np.float32)
            part *= np.float32(std)
            flat[start:start + part.size] = part
        return out
    return normal


def finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H", gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q", gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    return f.read(int(_read(f, "<Q"))).decode("utf-8", "replace")


def read_scalar_metadata(path: str | pathlib.Path) -> dict[str, int | float | bool | str]:
    """The scalar key/values of a little-endian GGUF file (arrays are skipped).

    Reads only the header: gguf.GGUFReader parses every field eagerly, which takes
    seconds on a real vocabulary (tens of thousands of tokens and merges).
    """
    values: dict[str, int | float | bool | str] = {}
    with open(path, "rb") as f:
        if _read(f, "<I") != gguf.GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        # A byte-swapped (big-endian) version reads as a huge number.
        if not 2 <= _read(f, "<I") < 0x10000:
            raise ValueError(f"{path}: only little-endian GGUF v2+ is supported")
        _read(f, "<Q")  # tensor count
        for _ in range(int(_read(f, "<Q"))):
            key = _read_string(f)
            vtype = gguf.GGUFValueType(_read(f, "<I"))
            if vtype == gguf.GGUFValueType.STRING:
                values[key] = _read_string(f)
            elif vtype != gguf.GGUFValueType.ARRAY:
                values[key] = _read(f, _SCALAR_FORMATS[vtype])
            else:
                etype = gguf.GGUFValueType(_read(f, "<I"))
                count = int(_read(f, "<Q"))
                if etype == gguf.GGUFValueType.STRING:
                    for _ in range(count):
                        f.seek(int(_read(f, "<Q")), 1)
                elif etype == gguf.GGUFValueType.ARRAY:
                    raise ValueError(f"{path}: nested array in {key} is not supported")
                else:
                    f.seek(count * struct.calcsize(_SCALAR_FORMATS[etype]), 1)
    return values


def read_text_n_embd(text_model_path: str | pathlib.Path) -> int:
    meta = read_scalar_metadata(text_model_path)
    key = f"{meta.get('general.architecture')}.embedding_length"
    if key not in meta:
        raise ValueError(f"{text_model_path}: no {key} in metadata")
    return int(meta[key])
