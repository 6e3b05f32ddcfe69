"""Hypothesis strategies for damaged session state files, made from files a session really wrote
(tests/test_fuzz.py writes them): bytes flipped, the file cut short, runs of bytes inserted or
deleted, each with or without the checksum made to fit again; and, behind a recomputed checksum (so
the checks after it are reached), one to three numbers of the file set to boundary values (counts,
lengths, token ids, cell counts, positions, llama.cpp's KV layer headers, encoder values), strings
replaced, and whole parts dropped, repeated or swapped (entries, items, cells, layers, slots). A
case is a description; `apply` makes its bytes with state_file_edit.py."""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np
from hypothesis import strategies as st

import state_file_edit as sfe

# the numbers of a file, by what they are (state_file_edit.fields names them)
GROUPS = {
    "header": r"^(version|body_length)$",
    "length": r"\.length$|state_length$|n_floats$",
    "count": r"\.n_(saved|items|images|captions|embeddings|history|prints)$|^n_slots$",
    "item": r"\.item\d+\.(token|n_pos|n_cells)$|\.(turn_end|used)$",
    "kv-header": r"kv\.(magic|seq_id|n_stream|stream\d+\.n_cells|v_trans|n_layer)$",
    "kv-layer": r"kv\.[kv]\d+\.(type|row|el|embd)$",
    "kv-cell": r"kv\.cell\d+\.",
    "value": r"embedding\d+\.value\d+$|\.tick$|\.print\d+$",
}
EXTREME_INTS = [0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 255, 256, 511, 512, 513, 831, 832, 2047, 2048, 2049, 4096,
                65535, 65536, 2**20, 2**26, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**61, 2**63 - 1, 2**63, 2**64 - 1, -1,
                -2, -(2**31)]
EXTREME_FLOATS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1e30]
# strings a media id, an image id, a query or a fingerprint may be replaced by
STRINGS = ["", "img-", "img-0000000000000000", "img-0000000000000000#0", "img-0000000000000000#99999999999",
           "img-FFFFFFFFFFFFFFFF#0", "img-000000000000000g#0", "img-0000000000000000#", "#0", "x" * 64, "x" * 65,
           "\x00", "\udcff\udcfe", "é" * 40, "Compare them.", "format=1\n", "a\nb=c"]
# whole parts dropped, repeated or swapped; KV_EDITS rewrite an entry's llama.cpp state
KV_EDITS = ("drop_cell", "drop_layer", "swap_kv_layers", "rotate_positions", "one_position")
STRUCTURE = ["drop_entry", "dup_entry", "drop_item", "dup_item", "swap_items", *KV_EDITS, "dup_slot", "drop_slot",
             "swap_slots", "swap_embeddings", "drop_embeddings", "drop_images", "caption_for_next_turn", "string"]


def _groups(fields: list[sfe.Field]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, f in enumerate(fields):
        for group, pattern in GROUPS.items():
            if re.search(pattern, f.name):
                out.setdefault(group, []).append(i)
                break
    return out


class Bases:
    """The files a campaign mutates, with their fields listed once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.fields = {name: sfe.fields(data) for name, data in files.items()}
        self.groups = {name: _groups(f) for name, f in self.fields.items()}


@st.composite
def _value(draw: st.DrawFn, data: bytes, f: sfe.Field) -> float:
    if f.fmt == "f":
        return draw(st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats(width=32)))
    (old,) = struct.unpack_from("<" + f.fmt, data, f.offset)
    bits = 8 * f.size
    near = [old - 2, old - 1, old + 1, old + 2, old * 2, old // 2, old ^ (1 << draw(st.integers(0, bits - 1)))]
    return draw(st.one_of(st.sampled_from(EXTREME_INTS), st.sampled_from(near), st.integers(0, 2**bits - 1)))


@st.composite
def _field_op(draw: st.DrawFn, bases: Bases, base: str) -> dict[str, Any]:
    groups = bases.groups[base]
    edits = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        index = draw(st.sampled_from(groups[draw(st.sampled_from(sorted(groups)))]))
        edits.append((index, draw(_value(bases.files[base], bases.fields[base][index]))))
    return {"op": "fields", "edits": edits}


@st.composite
def _byte_op(draw: st.DrawFn, bases: Bases, base: str) -> dict[str, Any]:
    n = len(bases.files[base])
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete"]))
    reseal = draw(st.booleans())
    # a field's offset, where a cut or a flip changes a number's meaning, or anywhere
    offsets = [f.offset for f in bases.fields[base]]
    at = draw(st.one_of(st.sampled_from(offsets), st.integers(0, n - 1)))
    if kind == "flip":
        flips = [(at, draw(st.integers(1, 255)))]
        flips += [(draw(st.integers(0, n - 1)), draw(st.integers(1, 255))) for _ in range(draw(st.integers(0, 3)))]
        return {"op": "flip", "flips": flips, "reseal": reseal}
    if kind == "truncate":
        return {"op": "truncate", "keep": at, "reseal": reseal}
    size = draw(st.sampled_from([1, 2, 3, 4, 7, 8, 12, 16, 100]))
    if kind == "insert":
        return {"op": "insert", "at": at, "bytes": draw(st.binary(min_size=size, max_size=size)), "reseal": reseal}
    return {"op": "delete", "at": at, "size": size, "reseal": reseal}


@st.composite
def _structure_op(draw: st.DrawFn) -> dict[str, Any]:
    what = draw(st.sampled_from(STRUCTURE))
    return {"op": "structure", "what": what, "pick": draw(st.integers(0, 2**16)),
            "string": draw(st.one_of(st.sampled_from(STRINGS), st.text(max_size=30)))}


def state_cases(bases: Bases) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def case(draw: st.DrawFn) -> dict[str, Any]:
        base = draw(st.sampled_from(sorted(bases.files)))
        op = draw(st.sampled_from(["bytes", "fields", "fields", "structure"]))
        if op == "bytes":
            mutation = draw(_byte_op(bases, base))
        elif op == "fields":
            mutation = draw(_field_op(bases, base))
        else:
            mutation = draw(_structure_op())
        return {"base": base, **mutation}
    return case()


def apply(bases: Bases, case: dict[str, Any]) -> bytes:
    """The damaged file `case` describes."""
    data = bases.files[case["base"]]
    op = case["op"]
    if op == "fields":
        fields = bases.fields[case["base"]]
        for index, value in case["edits"]:
            data = sfe.set_field(data, fields[index], value)
        return data
    if op == "structure":
        return _structure(data, case)
    raw = bytearray(data)
    if op == "flip":
        for at, mask in case["flips"]:
            raw[at] ^= mask
    elif op == "truncate":
        del raw[case["keep"]:]
    elif op == "insert":
        raw[case["at"]:case["at"]] = case["bytes"]
    else:
        del raw[case["at"]:case["at"] + case["size"]]
    out = bytes(raw)
    return sfe.reseal(out) if case["reseal"] and len(out) >= sfe.HEADER + 8 else out


def _structure(data: bytes, case: dict[str, Any]) -> bytes:
    sf = sfe.parse(data)
    pick, what = case["pick"], case["what"]
    slots = [s for s in sf.slots if s.entries] or sf.slots
    slot = slots[pick % len(slots)]
    entry = slot.entries[pick % len(slot.entries)] if slot.entries else None
    if what == "drop_entry" and entry is not None:
        slot.entries.remove(entry)
    elif what == "dup_entry" and entry is not None:
        slot.entries.append(sfe.Entry(entry.turn_end, entry.used, list(entry.items), entry.state))
    elif what in ("drop_item", "dup_item", "swap_items") and entry is not None and entry.items:
        i = pick % len(entry.items)
        if what == "drop_item":
            del entry.items[i]
        elif what == "dup_item":
            entry.items.insert(i, entry.items[i])
        else:
            j = (i + 1) % len(entry.items)
            entry.items[i], entry.items[j] = entry.items[j], entry.items[i]
    elif what in KV_EDITS and entry is not None:
        kv = entry.kv()
        stream = kv.modules[0][0]
        n = len(stream.pos)
        if what == "drop_cell" and n > 1:
            sfe.drop_last_cell(stream)
        elif what == "drop_layer" and len(stream.k) > 1:
            del stream.k[pick % len(stream.k)]
            del stream.v[pick % len(stream.v)]
        elif what == "rotate_positions":  # every position in range, in another order
            stream.pos = stream.pos[pick % n:] + stream.pos[:pick % n]
        elif what == "one_position":  # every cell at one position in range
            stream.pos = [stream.pos[pick % n]] * n
        else:
            stream.k, stream.v = stream.v, stream.k
        entry.state = sfe.kv_bytes(kv)
    elif what == "dup_slot":
        sf.slots.append(slot)
    elif what == "drop_slot":
        sf.slots.remove(slot)
    elif what == "swap_slots" and len(sf.slots) > 1:
        sf.slots.reverse()
    elif what == "swap_embeddings" and len(slot.embeddings) > 1:
        (a, x), (b, y) = slot.embeddings[0], slot.embeddings[1]
        slot.embeddings[0], slot.embeddings[1] = (a, y), (b, x)
    elif what == "drop_embeddings":
        slot.embeddings.clear()
    elif what == "drop_images":
        slot.image_used.clear()
    elif what == "caption_for_next_turn" and slot.image_used:
        # a caption the continued turn will look up, with text the case chose
        slot.captions.append((slot.image_used[pick % len(slot.image_used)][0], "Compare them.", case["string"]))
    elif what == "string":
        _replace_string(sf, slot, entry, pick, case["string"])
    return sfe.to_bytes(sf)


def _replace_string(sf: sfe.StateFile, slot: sfe.Slot, entry: Any, pick: int, text: str) -> None:
    where = pick % 5
    if where == 0 and entry is not None and entry.items:
        media = [i for i in entry.items if i.token == -1] or entry.items
        media[pick % len(media)].media_id = text
    elif where == 1 and slot.image_used:
        k = pick % len(slot.image_used)
        slot.image_used[k] = (text, slot.image_used[k][1])
    elif where == 2 and slot.captions:
        k = pick % len(slot.captions)
        image, query, caption = slot.captions[k]
        slot.captions[k] = (image, text, caption) if pick & 8 else (text, query, caption)
    elif where == 3 and slot.embeddings:
        k = pick % len(slot.embeddings)
        slot.embeddings[k] = (text, np.asarray(slot.embeddings[k][1]))
    else:
        lines = sf.fingerprint.splitlines(keepends=True)
        lines[pick % len(lines)] = text
        sf.fingerprint = "".join(lines)
