"""Hypothesis strategies for damaged GGUF files, made from the shipped tiny pair with gguf_mutate:
keys dropped, retyped or set to extreme values, arrays cut or grown, tensors dropped, reshaped,
retyped or added, the projector type switched to every type mtmd knows; then the serialized bytes
cut short or overwritten in the header (version, counts, key and tensor tables)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

import gguf_mutate as gm

VT = gm.ValueType

INT_TYPES = {
    VT.UINT8: (0, 2**8 - 1), VT.INT8: (-(2**7), 2**7 - 1), VT.UINT16: (0, 2**16 - 1), VT.INT16: (-(2**15), 2**15 - 1),
    VT.UINT32: (0, 2**32 - 1), VT.INT32: (-(2**31), 2**31 - 1), VT.UINT64: (0, 2**64 - 1), VT.INT64: (-(2**63), 2**63 - 1),
}
FLOAT_TYPES = (VT.FLOAT32, VT.FLOAT64)
SCALAR_TYPES = (*INT_TYPES, *FLOAT_TYPES, VT.BOOL, VT.STRING)

# Every projector type mtmd 0.3.36 knows: with the tiny LLaVA tensors, each exercises another loader.
PROJECTOR_TYPES = [
    "mlp", "mlp_norm", "ldp", "ldpv2", "resampler", "glm_edge", "merger", "gemma3", "idefics3", "pixtral",
    "qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger", "ultravox", "internvl", "llama4", "qwen2a", "qwen25o",
    "voxtral", "lfm2", "kimivl", "lightonocr", "cogvlm", "janus_pro", "deepseekocr", "minicpmv", "cosmos",
    "gemma3n", "whisper", "bogus", "",
]
# Tensor names the LLaVA family and neighbouring loaders look up (added where absent).
EXTRA_TENSORS = [
    "mm.1.weight", "mm.1.bias", "mm.3.weight", "mm.3.bias", "mm.4.weight", "mm.4.bias", "v.class_embd",
    "v.patch_embd.bias", "v.pre_ln.weight", "v.post_ln.weight", "mm.model.mlp.1.weight", "mm.input_norm_w",
    "v.blk.2.attn_q.weight", "mm.model.fc.weight", "resampler.query", "v.patch_embd.weight.1",
    "output.weight", "blk.2.attn_q.weight", "token_embd.weight",
]
EXTREME_INTS = [0, 1, 2, 3, 7, 16, 31, 32, 33, 63, 64, 65, 255, 256, 4095, 4096, 65535, 65536, 2**31 - 1, 2**31,
                2**32 - 1, 2**63 - 1, -1, -2, -(2**31), -(2**63)]
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, 1e30, -1.0, 1.0, 0.5, 3.4e38]
MAX_TENSOR_ELEMENTS = 1 << 18


def fit(value: int, vtype: VT) -> int:
    lo, hi = INT_TYPES[vtype]
    return (value - lo) % (hi - lo + 1) + lo


def value_of(vtype: VT) -> st.SearchStrategy[Any]:
    if vtype in INT_TYPES:
        lo, hi = INT_TYPES[vtype]
        return st.one_of(st.sampled_from(EXTREME_INTS).map(lambda v: fit(v, vtype)), st.integers(lo, hi))
    if vtype in FLOAT_TYPES:
        return st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats(width=32))
    if vtype == VT.BOOL:
        return st.booleans()
    return st.one_of(st.sampled_from(PROJECTOR_TYPES + ["llama", "clip", "gpt2", "\x00", "é" * 40]),
                     st.text(max_size=24))


@st.composite
def key_op(draw: st.DrawFn, g: gm.Gguf) -> tuple[Any, ...]:
    key = draw(st.sampled_from(sorted(g.keys)))
    old = g.keys[key]
    kind = draw(st.sampled_from(["drop", "value", "value", "retype", "array"]))
    if kind == "drop":
        return ("drop_key", key)
    if kind == "value" and old.type != VT.ARRAY:
        return ("set_key", key, draw(value_of(old.type)), old.type, None)
    if kind == "array" or old.type == VT.ARRAY:
        sub = old.sub_type if old.type == VT.ARRAY and draw(st.booleans()) else draw(st.sampled_from(SCALAR_TYPES))
        assert sub is not None
        n_old = len(old.value) if old.type == VT.ARRAY else 1
        # (the gguf writer refuses empty arrays: at least one element)
        n = draw(st.one_of(st.sampled_from([1, 2, max(1, n_old - 1), n_old + 1]), st.integers(1, n_old + 8)))
        if sub == old.sub_type and n <= n_old and old.type == VT.ARRAY:
            items = list(old.value)[:n]  # the real values, cut short
        else:
            items = draw(st.lists(value_of(sub), min_size=min(n, 64), max_size=min(n, 64)))
            if n > 64:  # a long array of one repeated value
                items += [items[-1] if items else draw(value_of(sub))] * (n - 64)
        return ("set_key", key, items, VT.ARRAY, sub)
    vtype = draw(st.sampled_from(SCALAR_TYPES))
    return ("set_key", key, draw(value_of(vtype)), vtype, None)


@st.composite
def tensor_op(draw: st.DrawFn, g: gm.Gguf) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["drop", "reshape", "reshape", "retype", "add", "fill"]))
    if kind == "add":
        name = draw(st.sampled_from(EXTRA_TENSORS))
        shape = draw(st.lists(st.sampled_from([1, 2, 3, 16, 32, 64, 128]), min_size=1, max_size=3))
        return ("set_tensor", name, tuple(shape), draw(st.sampled_from(["f32", "f16"])), None)
    name = draw(st.sampled_from(sorted(g.tensors)))
    old = g.tensors[name]
    if kind == "drop":
        return ("drop_tensor", name)
    dtype = "f16" if old.dtype == np.float16 else "f32"
    if kind == "retype":
        return ("set_tensor", name, old.shape, "f32" if dtype == "f16" else "f16", None)
    if kind == "fill":
        return ("set_tensor", name, old.shape, dtype, draw(st.sampled_from(EXTREME_FLOATS)))
    shape = list(old.shape)
    how = draw(st.sampled_from(["dim", "transpose", "flatten", "extra-dim"]))
    if how == "dim":
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.sampled_from([1, 2, shape[i] - 1, shape[i] + 1, shape[i] * 2, max(1, shape[i] // 2)]))
    elif how == "transpose":
        shape = shape[::-1]
    elif how == "flatten":
        shape = [int(np.prod(shape))]
    else:
        shape = [draw(st.sampled_from([1, 2, 3]))] + shape
    shape = [max(1, s) for s in shape][:4]
    if int(np.prod(shape)) > MAX_TENSOR_ELEMENTS:
        shape = [1] * (len(shape) - 1) + [MAX_TENSOR_ELEMENTS]
    return ("set_tensor", name, tuple(shape), dtype, None)


@st.composite
def byte_op(draw: st.DrawFn, header_size: int, file_size: int) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "count", "version"]))
    if kind == "truncate":
        return ("truncate", draw(st.one_of(st.integers(0, header_size + 64), st.integers(0, file_size - 1))))
    if kind == "flip":
        offset = draw(st.integers(4, header_size - 1))
        return ("overwrite", offset, bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=8))))
    if kind == "count":  # n_tensors at 8, n_kv at 16
        return ("u64", draw(st.sampled_from([8, 16])), draw(st.sampled_from(EXTREME_INTS).map(lambda v: v % 2**64)))
    return ("u32", 4, draw(st.sampled_from([0, 1, 2, 3, 4, 2**31, 2**32 - 1])))


class Bases:
    """The parsed tiny pair and its header sizes (a short repr: hypothesis prints its arguments)."""

    def __init__(self, text: Path, mmproj: Path) -> None:
        self.gguf = {"text": gm.Gguf.read(text), "mmproj": gm.Gguf.read(mmproj)}
        self.sizes = {k: (header_size(p), p.stat().st_size) for k, p in (("text", text), ("mmproj", mmproj))}

    def __repr__(self) -> str:
        return "Bases(tiny pair)"


@st.composite
def gguf_cases(draw: st.DrawFn, bases: Bases) -> dict[str, Any]:
    """A damaged copy of one file of the tiny pair: {"target", "ops", "byte_ops"}."""
    target = draw(st.sampled_from(["mmproj", "mmproj", "text"]))  # mtmd trusts its file most
    g = bases.gguf[target]
    op = st.one_of(key_op(g), key_op(g), tensor_op(g))
    if target == "mmproj":
        op = st.one_of(op, st.sampled_from(PROJECTOR_TYPES).map(
            lambda t: ("set_key", "clip.projector_type", t, VT.STRING, None)))
    ops = draw(st.lists(op, min_size=0, max_size=3))
    header, size = bases.sizes[target]
    byte_ops = draw(st.lists(byte_op(header, size), min_size=0 if ops else 1, max_size=2))
    return {"target": target, "ops": ops, "byte_ops": byte_ops}


def apply(base: gm.Gguf, case: dict[str, Any], out: Path) -> Path:
    """Writes the case's damaged file to `out`."""
    g = base.copy()
    for op in case["ops"]:
        if op[0] == "drop_key":
            g.keys.pop(op[1], None)
        elif op[0] == "set_key":
            _, key, value, vtype, sub = op
            g.set_key(key, value, vtype, sub)
        elif op[0] == "drop_tensor":
            g.tensors.pop(op[1], None)
        elif op[0] == "set_tensor":
            _, name, shape, dtype, fill_value = op
            old = g.tensors.get(name)
            np_type = np.float16 if dtype == "f16" else np.float32
            with np.errstate(over="ignore", invalid="ignore"):  # 1e30 in f16 is meant to overflow
                if old is not None and old.shape == tuple(shape) and fill_value is None:
                    array = old.astype(np_type)
                else:
                    array = np.full(shape, 0.01 if fill_value is None else fill_value, dtype=np_type)
            g.set_tensor(name, array)
    g.write(out)
    if case["byte_ops"]:
        data = bytearray(out.read_bytes())
        for op in case["byte_ops"]:
            if op[0] == "truncate":
                del data[op[1]:]
            elif op[0] == "overwrite":
                data[op[1]:op[1] + len(op[2])] = op[2]
            elif op[0] == "u64":
                data[op[1]:op[1] + 8] = op[2].to_bytes(8, "little")
            elif op[0] == "u32":
                data[op[1]:op[1] + 4] = op[2].to_bytes(4, "little")
        out.write_bytes(bytes(data))
    return out


def header_size(path: Path) -> int:
    """Bytes before the tensor data: where the header, the keys and the tensor table live."""
    import gguf

    return int(gguf.GGUFReader(str(path)).data_offset)


SWEEP_STRINGS = ["", "x", "\x00", "llama", "clip", "gpt2", "bert", "t5", "rwkv", "plamo2", "no_vocab", "{{", "é" * 300]


def single_edit_sweep(bases: Bases, targets: tuple[str, ...] = ("text", "mmproj")) -> list[dict[str, Any]]:
    """Every key and tensor of the `targets` files, one at a time: keys dropped, retyped and set to
    each extreme value of their type (short integer arrays, such as LLaVA-1.6's grid pinpoints,
    element by element too); tensors dropped, retyped, filled with NaN, reshaped. Deterministic: it
    finds what random combinations dilute (a single NaN epsilon)."""
    cases = []
    for target in targets:
        for key, v in bases.gguf[target].keys.items():
            ops: list[tuple[Any, ...]] = [("drop_key", key)]
            if v.type == VT.ARRAY:
                ops.append(("set_key", key, list(v.value)[:1], VT.ARRAY, v.sub_type))
                other = (VT.INT32, [7] * len(v.value)) if v.sub_type == VT.STRING else (VT.STRING, ["x"] * len(v.value))
                ops.append(("set_key", key, other[1], VT.ARRAY, other[0]))
                if v.sub_type in INT_TYPES and len(v.value) <= 64:
                    values = list(v.value)
                    ops.append(("set_key", key, values, VT.ARRAY, VT.UINT8 if v.sub_type != VT.UINT8 else VT.INT64))
                    for x in EXTREME_INTS:
                        ops.append(("set_key", key, [fit(x, v.sub_type)] + values[1:], VT.ARRAY, v.sub_type))
            elif v.type in INT_TYPES:
                ops += [("set_key", key, fit(x, v.type), v.type, None) for x in EXTREME_INTS]
                ops += [("set_key", key, "7", VT.STRING, None), ("set_key", key, 7.0, VT.FLOAT32, None)]
            elif v.type in FLOAT_TYPES:
                ops += [("set_key", key, x, v.type, None) for x in EXTREME_FLOATS]
                ops.append(("set_key", key, 1, VT.UINT32, None))
            elif v.type == VT.STRING:
                ops += [("set_key", key, x, VT.STRING, None) for x in SWEEP_STRINGS]
                ops.append(("set_key", key, 1, VT.UINT32, None))
            else:
                ops += [("set_key", key, not v.value, v.type, None), ("set_key", key, 1, VT.UINT8, None)]
            cases += [{"target": target, "ops": [op], "byte_ops": []} for op in ops]
        for name, t in bases.gguf[target].tensors.items():
            dtype = "f16" if t.dtype == np.float16 else "f32"
            shape = list(t.shape)
            shapes = [shape[::-1], [int(np.prod(shape))], [1] + shape, shape[:-1] + [shape[-1] + 1],
                      shape[:-1] + [max(1, shape[-1] // 2)], [shape[0] + 1] + shape[1:]]
            ops = [("drop_tensor", name), ("set_tensor", name, tuple(shape), "f32" if dtype == "f16" else "f16", None),
                   ("set_tensor", name, tuple(shape), dtype, math.nan)]
            ops += [("set_tensor", name, tuple(x), dtype, None) for x in shapes if x != shape and len(x) <= 4]
            cases += [{"target": target, "ops": [op], "byte_ops": []} for op in ops]
    return cases
