"""Writes damaged or altered copies of a GGUF file for the error tests, with the PyPI `gguf`
package: drop a tensor or a key, change a key's type or value, replace a tensor, truncate.

    g = Gguf.read(mmproj)
    g.drop_tensor("mm.2.bias").set_key("clip.vision.image_size", "32", ValueType.STRING).write(out)
    truncate(mmproj, out, 0.5)

Meant for the small f32/f16 files under models/: tensors are held in memory as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import gguf
import numpy as np

PathLike = Union[str, Path]

ValueType = gguf.GGUFValueType


@dataclass
class Value:
    value: Any
    type: ValueType
    sub_type: Optional[ValueType] = None  # element type of an ARRAY


@dataclass
class Gguf:
    """The keys (in file order) and tensors (numpy order: ggml's ne reversed) of a GGUF file."""

    keys: dict[str, Value] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def read(cls, path: PathLike) -> "Gguf":
        reader = gguf.GGUFReader(str(path))
        out = cls()
        for name, f in reader.fields.items():
            if name.startswith("GGUF."):  # the reader's pseudo-fields: version and counts
                continue
            sub = f.types[-1] if f.types[0] == ValueType.ARRAY else None
            out.keys[name] = Value(f.contents(), f.types[0], sub)
        for t in reader.tensors:
            if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                raise ValueError(f"{path}: tensor {t.name} is {t.tensor_type.name}; only f32/f16 files are supported")
            # copy: the reader's arrays are views of a memory map
            out.tensors[t.name] = np.array(t.data).reshape([int(n) for n in reversed(t.shape)])
        return out

    def copy(self) -> "Gguf":
        return Gguf(dict(self.keys), dict(self.tensors))

    def drop_tensor(self, name: str) -> "Gguf":
        del self.tensors[name]
        return self

    def set_tensor(self, name: str, array: np.ndarray) -> "Gguf":
        """Replace (or add) a tensor; its dtype (float32/float16) becomes the stored type."""
        self.tensors[name] = np.ascontiguousarray(array)
        return self

    def drop_key(self, key: str) -> "Gguf":
        del self.keys[key]
        return self

    def set_key(self, key: str, value: Any, vtype: ValueType, sub_type: Optional[ValueType] = None) -> "Gguf":
        """Set a key to a value of the given GGUF type (existing keys keep their position)."""
        self.keys[key] = Value(value, vtype, sub_type)
        return self

    def write(self, path: PathLike) -> Path:
        arch = self.keys.get("general.architecture")
        w = gguf.GGUFWriter(str(path), arch.value if arch else "none")
        # The writer adds general.architecture itself; replace its keys with ours, in our order.
        w.kv_data[0].clear()
        for key, v in self.keys.items():
            w.add_key_value(key, v.value, v.type, sub_type=v.sub_type)
        for name, array in self.tensors.items():
            w.add_tensor(name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return Path(path)


def mutated(src: PathLike, dst: PathLike, *, drop_tensors: tuple[str, ...] = (), drop_keys: tuple[str, ...] = (),
            set_keys: Optional[dict[str, tuple[Any, ValueType]]] = None,
            set_tensors: Optional[dict[str, np.ndarray]] = None) -> Path:
    """A copy of `src` at `dst` with the given tensors/keys removed or replaced."""
    g = Gguf.read(src)
    for name in drop_tensors:
        g.drop_tensor(name)
    for key in drop_keys:
        g.drop_key(key)
    for key, (value, vtype) in (set_keys or {}).items():
        g.set_key(key, value, vtype)
    for name, array in (set_tensors or {}).items():
        g.set_tensor(name, array)
    return g.write(dst)


def truncate(src: PathLike, dst: PathLike, fraction: float = 0.5) -> Path:
    """The first `fraction` of `src`'s bytes, as a download cut short would leave it."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)
