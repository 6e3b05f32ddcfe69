"""Reads and rewrites session state files field by field, so that tests and the fuzz campaign can
reach the checks behind the checksum: a file edited here gets its body length and FNV-1a checksum
recomputed, and only the edited field is wrong. A development tool of the tests, not the runtime.

The layout is csrc/ecso/session_state_file.cpp's (little-endian): "ECSOSTAT", u32 version, u64
body length, the body, u64 FNV-1a 64 of the body. The body: the fingerprint (u32 length + bytes),
u32 slot count, then per slot its saved sequences (u64 turn_end, u64 used, u32 item count, items
of i32 token, i32 n_pos, i32 n_cells and a media id string, then u64 length + llama.cpp's sequence
state), its image uses (id, u64 tick), captions (image id, query, caption), encoder outputs (id,
u64 float count, floats), u64 tick and history (u32 count of u64 message prints, per conversation).

A sequence state is the pinned llama.cpp's (kv_state_check.hpp): u32 magic, i32 sequence id, then
per KV cache a u32 stream count and per stream a u32 cell count; a stream with cells has its cells'
metadata (i32 pos, u32 n_seq_id, the ids), u32 v_trans, u32 layer count, every layer's K (i32 type,
u64 row bytes, rows) then every layer's V (i32 type, then u64 row bytes, or with v_trans u32
element size and u32 row elements, then the values).

`fields(data)` lists every number a file holds with its offset, so a mutation can overwrite any one
of them (`set_field`) and the file stays well-formed around it."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAGIC = b"ECSOSTAT"
HEADER = 8 + 4 + 8  # magic, version, body length
_FNV_OFFSET = 1469598103934665603
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Field:
    """A number in the file: where it is (from the file's start) and how it is packed."""

    name: str
    offset: int
    fmt: str  # struct format without the byte order: "I", "i", "Q", "f"

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)


@dataclass
class Item:
    token: int
    n_pos: int
    n_cells: int
    media_id: str


@dataclass
class Layer:
    type: int
    row: int  # bytes of one cell's row (K, or V without v_trans)
    data: bytes
    el: Optional[int] = None  # V with v_trans: element size
    embd: Optional[int] = None  # V with v_trans: elements per cell


@dataclass
class Stream:
    pos: list[int]
    seq_ids: list[list[int]]  # each cell's sequence ids (llama.cpp writes one)
    v_trans: int = 0
    k: list[Layer] = field(default_factory=list)
    v: list[Layer] = field(default_factory=list)
    n_cells: Optional[int] = None  # the count written; None: len(pos)


@dataclass
class KvState:
    magic: int
    seq_id: int
    modules: list[list[Stream]]
    trailing: bytes = b""


@dataclass
class Entry:
    turn_end: int
    used: int
    items: list[Item]
    state: bytes

    def kv(self) -> KvState:
        return parse_kv(self.state)


@dataclass
class Slot:
    entries: list[Entry]
    image_used: list[tuple[str, int]]
    captions: list[tuple[str, str, str]]
    embeddings: list[tuple[str, np.ndarray]]  # float32 values
    tick: int
    history: list[list[int]]


@dataclass
class StateFile:
    version: int
    fingerprint: str
    slots: list[Slot]
    trailing: bytes = b""  # after the last slot, inside the body


class _Reader:
    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data, self.at, self.base = data, 0, base
        self.fields: list[Field] = []

    def num(self, fmt: str, name: str) -> int:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise ValueError(f"ends inside {name}")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.fields.append(Field(name, self.base + self.at, fmt))
        self.at += size
        return value  # type: ignore[no-any-return]

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("ends inside its data")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def str(self, name: str) -> str:
        return _text(self.take(self.num("I", name + ".length")))


def _read_kv(r: _Reader, has_ext: bool) -> KvState:
    kv = KvState(r.num("I", "kv.magic"), r.num("i", "kv.seq_id"), [])
    while r.at < len(r.data):
        streams = []
        for s in range(r.num("I", "kv.n_stream")):
            n = r.num("I", f"kv.stream{s}.n_cells")
            stream = Stream([], [])
            streams.append(stream)
            if n == 0:
                continue
            for c in range(n):
                stream.pos.append(r.num("i", f"kv.cell{c}.pos"))
                n_seq = r.num("I", f"kv.cell{c}.n_seq_id")
                if has_ext:
                    for part in ("x", "y", "tok"):
                        r.num("i", f"kv.cell{c}.ext.{part}")
                stream.seq_ids.append([r.num("i", f"kv.cell{c}.seq_id") for _ in range(n_seq)])
            stream.v_trans = r.num("I", "kv.v_trans")
            n_layer = r.num("I", "kv.n_layer")
            for il in range(n_layer):
                t, row = r.num("i", f"kv.k{il}.type"), r.num("Q", f"kv.k{il}.row")
                stream.k.append(Layer(t, row, r.take(row * n)))
            for il in range(n_layer):
                t = r.num("i", f"kv.v{il}.type")
                if stream.v_trans:
                    el, embd = r.num("I", f"kv.v{il}.el"), r.num("I", f"kv.v{il}.embd")
                    stream.v.append(Layer(t, el * embd, r.take(el * embd * n), el, embd))
                else:
                    row = r.num("Q", f"kv.v{il}.row")
                    stream.v.append(Layer(t, row, r.take(row * n)))
        kv.modules.append(streams)
    return kv


def parse_kv(state: bytes, has_ext: bool = False) -> KvState:
    return _read_kv(_Reader(state), has_ext)


def kv_bytes(kv: KvState) -> bytes:
    out = [struct.pack("<Ii", kv.magic, kv.seq_id)]
    for streams in kv.modules:
        out.append(struct.pack("<I", len(streams)))
        for s in streams:
            out.append(struct.pack("<I", len(s.pos) if s.n_cells is None else s.n_cells))
            if not s.pos:
                continue
            for pos, ids in zip(s.pos, s.seq_ids):
                out.append(struct.pack("<iI", pos, len(ids)) + b"".join(struct.pack("<i", i) for i in ids))
            out.append(struct.pack("<II", s.v_trans, len(s.k)))
            out += [struct.pack("<iQ", k.type, k.row) + k.data for k in s.k]
            for v in s.v:
                if v.el is not None:
                    out.append(struct.pack("<iII", v.type, v.el, v.embd) + v.data)
                else:
                    out.append(struct.pack("<iQ", v.type, v.row) + v.data)
    out.append(kv.trailing)
    return b"".join(out)


def drop_last_cell(s: Stream) -> None:
    """Removes a stream's last cell with its K and V values, so that only the cell count changes."""
    n = len(s.pos)
    s.pos.pop()
    s.seq_ids.pop()
    for k in s.k:
        k.data = k.data[:k.row * (n - 1)]
    for v in s.v:
        if v.el is None:
            v.data = v.data[:v.row * (n - 1)]
        else:  # transposed: one run of n elements per row element
            assert v.embd is not None
            run = v.el * n
            v.data = b"".join(v.data[j * run:j * run + v.el * (n - 1)] for j in range(v.embd))


def _read_slot(r: _Reader, s: int) -> Slot:
    entries = []
    for e in range(r.num("I", f"slot{s}.n_saved")):
        p = f"slot{s}.entry{e}"
        turn_end, used = r.num("Q", p + ".turn_end"), r.num("Q", p + ".used")
        items = []
        for i in range(r.num("I", p + ".n_items")):
            q = f"{p}.item{i}"
            items.append(Item(r.num("i", q + ".token"), r.num("i", q + ".n_pos"), r.num("i", q + ".n_cells"),
                              r.str(q + ".media_id")))
        n_state = r.num("Q", p + ".state_length")
        start = r.base + r.at
        state = r.take(n_state)
        inner = _Reader(state, start)
        try:
            _read_kv(inner, False)
            r.fields += [Field(f"{p}.{f.name}", f.offset, f.fmt) for f in inner.fields]
        except ValueError:
            pass  # a damaged state: its numbers are not listed
        entries.append(Entry(turn_end, used, items, state))
    image_used = [(r.str(f"slot{s}.image{i}.id"), r.num("Q", f"slot{s}.image{i}.tick"))
                  for i in range(r.num("I", f"slot{s}.n_images"))]
    captions = [(r.str(f"slot{s}.caption{i}.image"), r.str(f"slot{s}.caption{i}.query"),
                 r.str(f"slot{s}.caption{i}.text")) for i in range(r.num("I", f"slot{s}.n_captions"))]
    embeddings = []
    for i in range(r.num("I", f"slot{s}.n_embeddings")):
        media_id = r.str(f"slot{s}.embedding{i}.id")
        n = r.num("Q", f"slot{s}.embedding{i}.n_floats")
        start = r.base + r.at
        values = np.frombuffer(r.take(4 * n), dtype="<f4").copy()
        # a few of the values, for mutations that make one NaN or huge
        r.fields += [Field(f"slot{s}.embedding{i}.value{k}", start + 4 * k, "f") for k in (0, n // 2, n - 1) if n]
        embeddings.append((media_id, values))
    tick = r.num("Q", f"slot{s}.tick")
    history = []
    for h in range(r.num("I", f"slot{s}.n_history")):
        history.append([r.num("Q", f"slot{s}.history{h}.print{k}")
                        for k in range(r.num("I", f"slot{s}.history{h}.n_prints"))])
    return Slot(entries, image_used, captions, embeddings, tick, history)


def _parse(data: bytes) -> tuple[StateFile, list[Field]]:
    if len(data) < HEADER + 8 or data[:8] != MAGIC:
        raise ValueError("not a whole state file")
    version, n_body = struct.unpack_from("<IQ", data, 8)
    if n_body != len(data) - HEADER - 8:
        raise ValueError("the body length does not match the file")
    r = _Reader(data[HEADER:HEADER + n_body], HEADER)
    fingerprint = r.str("fingerprint")
    slots = [_read_slot(r, s) for s in range(r.num("I", "n_slots"))]
    head = [Field("version", 8, "I"), Field("body_length", 12, "Q")]
    return StateFile(version, fingerprint, slots, r.data[r.at:]), head + r.fields


def parse(data: bytes) -> StateFile:
    return _parse(data)[0]


def fields(data: bytes) -> list[Field]:
    """Every number of a well-formed file (header, body, the KV states inside it), in file order."""
    return _parse(data)[1]


def _str(s: str) -> bytes:
    raw = _raw(s)
    return struct.pack("<I", len(raw)) + raw


def _slot_bytes(slot: Slot) -> bytes:
    out = [struct.pack("<I", len(slot.entries))]
    for e in slot.entries:
        out.append(struct.pack("<QQI", e.turn_end, e.used, len(e.items)))
        out += [struct.pack("<iii", i.token, i.n_pos, i.n_cells) + _str(i.media_id) for i in e.items]
        out.append(struct.pack("<Q", len(e.state)) + e.state)
    out.append(struct.pack("<I", len(slot.image_used)))
    out += [_str(i) + struct.pack("<Q", t) for i, t in slot.image_used]
    out.append(struct.pack("<I", len(slot.captions)))
    out += [_str(a) + _str(b) + _str(c) for a, b, c in slot.captions]
    out.append(struct.pack("<I", len(slot.embeddings)))
    out += [_str(i) + struct.pack("<Q", len(v)) + np.asarray(v, "<f4").tobytes() for i, v in slot.embeddings]
    out.append(struct.pack("<QI", slot.tick, len(slot.history)))
    for prints in slot.history:
        out.append(struct.pack("<I", len(prints)) + b"".join(struct.pack("<Q", p) for p in prints))
    return b"".join(out)


def seal(body: bytes, version: int = 1) -> bytes:
    """A file around `body`: the header with its length, and its checksum."""
    return MAGIC + struct.pack("<IQ", version, len(body)) + body + struct.pack("<Q", fnv1a64(body))


def to_bytes(sf: StateFile) -> bytes:
    body = _str(sf.fingerprint) + struct.pack("<I", len(sf.slots)) + b"".join(map(_slot_bytes, sf.slots))
    return seal(body + sf.trailing, sf.version)


def reseal(data: bytes) -> bytes:
    """`data` with its header's body length and its checksum made to fit whatever its body now is
    (everything after the header but the last 8 bytes)."""
    return seal(data[HEADER:-8], struct.unpack_from("<I", data, 8)[0])


def set_field(data: bytes, f: Field, value: float) -> bytes:
    """`data` with field `f` set to `value` (wrapped to the field's width) and the checksum recomputed."""
    if f.fmt == "f":
        packed = struct.pack("<f", value)
    else:
        bits = 8 * f.size
        v = int(value) % (1 << bits)
        if f.fmt.islower() and v >= 1 << (bits - 1):
            v -= 1 << bits
        packed = struct.pack("<" + f.fmt, v)
    edited = data[:f.offset] + packed + data[f.offset + f.size:]
    return edited if f.name in ("version", "body_length") else reseal(edited)
