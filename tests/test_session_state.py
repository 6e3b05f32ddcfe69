"""Session state files (Session(state=PATH), save_state, load_state, state_status): a conversation
saved and continued in a new session or a new process gives every token it gives without the stop,
reusing the saved cells and encoding no image again; a damaged, truncated or foreign file, and one
whose inner fields are wrong behind a recomputed checksum (state_file_edit.py), is refused whole
with StateFileError and leaves the cache as it was; a save killed at any moment leaves a file that
loads; save errors; a file moves between parallel and single-lane sessions."""

from __future__ import annotations

import gc
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest

import ecso_edge
import state_file_edit as sfe
from conftest import N_CTX
from ecso_edge import ConfigError, EcsoConfig, Session, StateFileError
from test_conversations import TURNS, converse

EMPTY = {"conversations": 0, "state_bytes": 0, "images": 0, "embedding_bytes": 0, "captions": 0, "hits": 0,
         "shared_hits": 0, "misses": 0, "evictions": 0}


def follow_up(results: list[Any], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages of the turn after `results` (answers to all of `turns` but the last)."""
    messages: list[dict[str, Any]] = []
    for turn, r in zip(turns, results):
        messages += [turn, {"role": "assistant", "content": r.answer}]
    return messages + [turns[len(results)]]


def steps(r: Any) -> list[tuple[str, list[int]]]:
    return [(s.name, list(s.tokens)) for s in r.steps]


def reused(r: Any) -> int:
    return int(r.stats["steps"]["answer"]["tokens_reused"])


SIZES = ("conversations", "state_bytes", "images", "embedding_bytes", "captions")


def sizes(info: dict[str, int]) -> dict[str, int]:
    """cache_info() without its counters (hits, misses, evictions): what the cache holds."""
    return {k: info[k] for k in SIZES}


def refusal(path: Path, reason: str) -> str:
    return (f"refused the state file {path}: {reason}; the session keeps its own cache (delete the file, or save "
            "a new one)")


def warm_session(model: ecso_edge.Model) -> Session:
    session = Session(model, EcsoConfig(verdict_override=True))
    converse(session, TURNS[:1])
    return session


def assert_refused(model: ecso_edge.Model, path: Path, reason: str) -> None:
    """Session(state=path) starts cold with a warning that says why; load_state on a session with a
    cache raises StateFileError with the same words and leaves that cache as it was."""
    expected = refusal(path, reason)
    with pytest.warns(RuntimeWarning) as caught:
        cold = Session(model, EcsoConfig(verdict_override=True), state=path)
    warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [str(w.message) for w in warned] == [f"ecso-edge: starting with an empty cache: {expected}"]
    assert warned[0].filename == __file__  # pointed at the caller's Session(...) line
    assert cold.state_status == f"refused: {expected}"
    assert cold.cache_info() == EMPTY
    warm = warm_session(model)
    before = warm.cache_info()
    with pytest.raises(StateFileError) as raised:
        warm.load_state(path)
    assert str(raised.value) == expected
    assert warm.cache_info() == before


@dataclass
class Saved:
    data: bytes  # the file after TURNS[:3] on the unsafe branch (captions kept too)
    messages: list[dict[str, Any]]  # the fourth turn's


@pytest.fixture(scope="module")
def saved(tiny_model: ecso_edge.Model, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    results = converse(session, TURNS[:3])
    path = tmp_path_factory.mktemp("state") / "base.ecso"
    session.save_state(path)
    return Saved(path.read_bytes(), follow_up(results, TURNS))


def write(tmp_path: Path, data: bytes, name: str = "state.ecso") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- a conversation continued after a stop ----------------------------------------------------------

CONTINUE = """
import json, pickle, sys
import ecso_edge
from ecso_edge import EcsoConfig, Session
text, mmproj, n_ctx, state, messages, unsafe = sys.argv[1:7]
model = ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=int(n_ctx))
session = Session(model, EcsoConfig(verdict_override=unsafe == "1"), state=state)
with open(messages, "rb") as f:
    r = session.chat(pickle.load(f), max_tokens=10)
print(json.dumps({"status": session.state_status, "steps": [[s.name, list(s.tokens)] for s in r.steps],
                  "reused": r.stats["steps"]["answer"]["tokens_reused"], "image_encodes": r.stats["image_encodes"]}))
"""


def continue_in_new_process(model: ecso_edge.Model, state: Path, messages: list[dict[str, Any]], unsafe: bool,
                            tmp_path: Path) -> dict[str, Any]:
    """A new process with a new Model: Session(state=...) and the next turn; what it printed."""
    where = tmp_path / "messages.pkl"
    where.write_bytes(pickle.dumps(messages))
    proc = subprocess.run([sys.executable, "-c", CONTINUE, str(model.text_model_path), str(model.mmproj_path),
                           str(N_CTX), str(state), str(where), "1" if unsafe else "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_a_saved_conversation_continues_token_for_token_in_a_new_session_and_a_new_process(
        tiny_model: ecso_edge.Model, tmp_path: Path, unsafe: bool) -> None:
    config = EcsoConfig(verdict_override=unsafe)
    a = Session(tiny_model, config)
    messages = follow_up(converse(a, TURNS[:3]), TURNS)
    path = tmp_path / "state.ecso"
    a.save_state(path)
    kept = a.cache_info()
    without_stop = a.chat(messages, max_tokens=10)
    del a  # its entries would serve b too (sessions on a Model share them): only the file may
    gc.collect()

    b = Session(tiny_model, config, state=path)
    assert b.state_status == "loaded" and sizes(b.cache_info()) == sizes(kept)
    after_load = b.chat(messages, max_tokens=10)
    restarted = continue_in_new_process(tiny_model, path, messages, unsafe, tmp_path)
    reference = Session(tiny_model, EcsoConfig(verdict_override=unsafe, reuse_kv=False)).chat(messages, max_tokens=10)

    assert [n for n, _ in steps(after_load)] == (
        ["answer", "judge", "caption_1", "caption_2", "text_only"] if unsafe else ["answer", "judge"])
    assert steps(after_load) == steps(without_stop) == steps(reference)
    assert [(n, t) for n, t in restarted["steps"]] == steps(reference)
    assert [s.input_tokens for s in after_load.steps] == [s.input_tokens for s in without_stop.steps]
    # step 1 evaluates only the new turn, as the session that never stopped does
    assert reused(after_load) == reused(without_stop) == restarted["reused"] > 0
    # both images came from the file, on the unsafe branch's captions too
    assert after_load.stats["image_encodes"] == without_stop.stats["image_encodes"] == 0
    assert restarted["image_encodes"] == 0 and restarted["status"] == "loaded"
    assert reference.stats["image_encodes"] > 0
    assert (b.cache_info()["hits"], b.cache_info()["shared_hits"], b.cache_info()["misses"]) == (1, 0, 0)


def test_state_status_says_what_became_of_the_file(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    path = tmp_path / "state.ecso"
    assert Session(tiny_model).state_status == "none"
    first = Session(tiny_model, EcsoConfig(verdict_override=False), state=path)
    assert first.state_status == "new" and not path.exists() and first.state_path == str(path)
    converse(first, TURNS[:2])
    first.save_state()  # to the state= file
    assert os.stat(path).st_mode & 0o777 == 0o600  # it holds the conversations: its owner's only
    assert Session(tiny_model, state=path).state_status == "loaded"
    # os.PathLike and str alike
    again = Session(tiny_model, state=str(path))
    assert again.load_state(path) == again.cache_info()  # what cache_info() says after the load
    assert again.cache_info()["conversations"] == 1 and again.cache_info()["images"] == 1


def test_the_saved_file_holds_the_conversation_and_its_images(saved: Saved, tiny_model: ecso_edge.Model) -> None:
    sf = sfe.parse(saved.data)
    assert sfe.to_bytes(sf) == saved.data  # the test's reading of the format is the writer's
    (slot,) = sf.slots
    (conversation,) = slot.entries
    images = [i.media_id for i in conversation.items if i.token == -1]
    assert len(images) == 2 and all(i.n_cells == 16 for i in conversation.items if i.token == -1)
    # the conversation's text, as the token ids of its cells
    text = b"".join(tiny_model.token_bytes(i.token) for i in conversation.items if i.token >= 0)
    assert b"What is this?" in text and b"Tell me more." in text and b"And this one?" in text
    assert [m for m, _ in slot.embeddings] == sorted(images)
    assert all(len(v) == 16 * tiny_model.n_embd for _, v in slot.embeddings)
    assert sorted(i for i, _ in slot.image_used) == sorted(m.split("#")[0] for m in images)
    # the captions of the unsafe branch, with the queries they answered: the text is in the file
    assert {q for _, q, _ in slot.captions} == {"What is this?", "Tell me more.", "And this one?"}
    fingerprint = dict(line.split("=", 1) for line in sf.fingerprint.splitlines())
    assert list(fingerprint) == ["format", "text_model", "mmproj", "n_batch", "n_gpu_layers", "mmproj_gpu",
                                 "flash_attn", "repack", "answer_cells", "llama_cpp"]
    assert fingerprint["format"] == "1" and fingerprint["n_batch"] == "512" and fingerprint["n_gpu_layers"] == "0"
    assert fingerprint["answer_cells"] == "prefilled"
    for key, path in (("text_model", tiny_model.text_model_path), ("mmproj", tiny_model.mmproj_path)):
        size, digest = fingerprint[key].split(":")
        assert int(size) == os.path.getsize(path) and len(digest) == 16  # the size and FNV-1a of the file
    (cells_of,) = conversation.kv().modules[0]
    assert sorted(cells_of.pos) == list(range(sum(i.n_pos for i in conversation.items)))


# --- refused files -----------------------------------------------------------------------------------

def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_a_flipped_byte_anywhere_is_refused(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    data = saved.data
    n = len(data)
    body = sorted({int(x) for x in np.linspace(sfe.HEADER, n - 9, 24)})
    cases = [(at, "it is not an ecso-edge state file") for at in range(8)]
    cases += [(at, f"its format version is {version}, this ecso-edge reads 1")
              for at, version in ((8, 0xFE), (9, 0xFF01), (10, 0xFF0001), (11, 0xFF000001))]
    cases += [(at, "its length does not match its header (truncated?)") for at in range(12, 20)]
    cases += [(at, "its checksum does not match (the file is damaged)") for at in body + list(range(n - 8, n))]
    for at, reason in cases:
        path = write(tmp_path, flip(data, at), f"flip-{at}.ecso")
        if at in (0, 8, 12, body[0], body[len(body) // 2], n - 1):
            assert_refused(tiny_model, path, reason)
        else:
            with pytest.raises(StateFileError) as e:
                warm_session(tiny_model).load_state(path)
            assert str(e.value) == refusal(path, reason), at


@pytest.mark.parametrize("keep", ["0", "1", "7", "8", "11", "12", "19", "20", "21", "half", "all-but-checksum",
                                  "all-but-1"])
def test_a_truncated_file_is_refused(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path, keep: str) -> None:
    n = len(saved.data)
    length = {"half": n // 2, "all-but-checksum": n - 8, "all-but-1": n - 1}.get(keep) or int(keep)
    path = write(tmp_path, saved.data[:length])
    # up to the header's end the reader runs out of bytes; after it, the length says what is missing
    reason = ("it ends inside its data (truncated?)" if length < sfe.HEADER
              else "its length does not match its header (truncated?)")
    assert_refused(tiny_model, path, reason)


def test_another_magic_or_format_version_is_refused(saved: Saved, tiny_model: ecso_edge.Model,
                                                    tmp_path: Path) -> None:
    assert_refused(tiny_model, write(tmp_path, b"ECSOSTAX" + saved.data[8:], "magic.ecso"),
                   "it is not an ecso-edge state file")
    # a model file given where the state file goes
    model_file = write(tmp_path, Path(tiny_model.mmproj_path).read_bytes(), "mmproj.ecso")
    assert_refused(tiny_model, model_file, "it is not an ecso-edge state file")
    for version in (2, 0, 2**32 - 1):
        path = write(tmp_path, saved.data[:8] + struct.pack("<I", version) + saved.data[12:], f"v{version}.ecso")
        assert_refused(tiny_model, path, f"its format version is {version}, this ecso-edge reads 1")


def save_with(model: ecso_edge.Model, path: Path) -> Path:
    session = Session(model, EcsoConfig(verdict_override=True))
    converse(session, TURNS[:2])
    session.save_state(path)
    return path


def test_a_file_from_a_model_with_another_n_batch_is_refused(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    other = ecso_edge.Model(tiny_model.text_model_path, tiny_model.mmproj_path, n_threads=1, n_ctx=N_CTX, n_batch=64)
    path = save_with(other, tmp_path / "state.ecso")
    assert_refused(tiny_model, path, "it was written for another model or context: n_batch is 64 in the file, "
                                     "512 here")
    assert Session(other, state=path).state_status == "loaded"


def test_a_file_with_decoded_answer_cells_is_refused_where_only_prefilled_ones_are_kept(
        tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    decoded = Session(tiny_model, EcsoConfig(reuse_answer_cells=True, verdict_override=True))
    converse(decoded, TURNS[:2])
    path = tmp_path / "state.ecso"
    decoded.save_state(path)
    assert_refused(tiny_model, path, "it was written for another model or context: answer_cells is decoded in the "
                                     "file, prefilled here")
    assert Session(tiny_model, EcsoConfig(reuse_answer_cells=True), state=path).state_status == "loaded"


def test_a_file_for_another_model_pair_is_refused(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    from ecso_edge import tiny_models

    # MobileVLM's tiny text model has the LLaVA pair's shape (the same KV layout): only the
    # fingerprint tells the two apart
    text, mmproj = tiny_models.write_family_pair("mobilevlm", tmp_path / "mobilevlm")
    other = ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=N_CTX)
    path = save_with(other, tmp_path / "state.ecso")
    assert kv_layout(path) == kv_layout(save_with(tiny_model, tmp_path / "own.ecso"))
    size, mine = os.path.getsize(text), os.path.getsize(tiny_model.text_model_path)
    theirs = fingerprint_line(path, "text_model")
    own = fingerprint_line(tmp_path / "own.ecso", "text_model")
    assert theirs.startswith(f"{size}:") and own.startswith(f"{mine}:") and theirs != own
    assert_refused(tiny_model, path, f"it was written for another model or context: text_model is {theirs} in the "
                                     f"file, {own} here")
    with pytest.raises(StateFileError, match="text_model is " + own):
        Session(other).load_state(tmp_path / "own.ecso")


def kv_layout(path: Path) -> list[Any]:
    """Each KV stream's v_trans and its layers' types and row sizes, in the file's first sequence."""
    kv = entry(sfe.parse(path.read_bytes())).kv()
    return [(s.v_trans, [(x.type, x.row, x.el, x.embd) for x in s.k + s.v]) for m in kv.modules for s in m]


def fingerprint_line(path: Path, key: str) -> str:
    line = next(x for x in sfe.parse(path.read_bytes()).fingerprint.splitlines() if x.startswith(key + "="))
    return line.split("=", 1)[1]


def test_a_file_written_with_another_projector_is_refused(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    raw = bytearray(Path(tiny_model.mmproj_path).read_bytes())
    raw[-3] ^= 0x01  # one byte of the last tensor's data: the same file size, another projector
    edited = tmp_path / "edited-mmproj.gguf"
    edited.write_bytes(bytes(raw))
    other = ecso_edge.Model(tiny_model.text_model_path, edited, n_threads=1, n_ctx=N_CTX)
    path = save_with(other, tmp_path / "state.ecso")
    theirs, own = fingerprint_line(path, "mmproj"), fingerprint_line(save_with(tiny_model, tmp_path / "own.ecso"),
                                                                     "mmproj")
    assert theirs.split(":")[0] == own.split(":")[0] == str(len(raw)) and theirs != own
    assert_refused(tiny_model, path, f"it was written for another model or context: mmproj is {theirs} in the file, "
                                     f"{own} here")


def test_a_refused_file_leaves_a_cache_that_still_continues(saved: Saved, tiny_model: ecso_edge.Model,
                                                            tmp_path: Path) -> None:
    config = EcsoConfig(verdict_override=False)
    warm, untouched = Session(tiny_model, config), Session(tiny_model, config)
    messages = follow_up(converse(warm, TURNS[:3]), TURNS)
    converse(untouched, TURNS[:3])
    expected = untouched.chat(messages, max_tokens=10)
    del untouched  # its entry for that turn would serve warm too (sessions on a Model share them)
    gc.collect()
    with pytest.raises(StateFileError):
        warm.load_state(write(tmp_path, saved.data[:-1]))
    r = warm.chat(messages, max_tokens=10)
    assert steps(r) == steps(expected) and reused(r) == reused(expected) > 0 and r.stats["image_encodes"] == 0


def test_state_file_error_is_an_os_error_of_ecso_edge() -> None:
    assert issubclass(StateFileError, OSError) and issubclass(StateFileError, ecso_edge.EcsoError)
    assert ecso_edge.errors.StateFileError is StateFileError


# --- the checks behind the checksum -----------------------------------------------------------------

def n_vocab(model: ecso_edge.Model) -> int:
    return len(gguf.GGUFReader(model.text_model_path).fields["tokenizer.ggml.tokens"].data)


def entry(sf: sfe.StateFile) -> sfe.Entry:
    return sf.slots[0].entries[0]


def media(sf: sfe.StateFile) -> sfe.Item:
    return next(i for i in entry(sf).items if i.token == -1)


def kv_edit(edit: Callable[[sfe.KvState], None]) -> Callable[[sfe.StateFile], None]:
    def apply(sf: sfe.StateFile) -> None:
        kv = entry(sf).kv()
        edit(kv)
        entry(sf).state = sfe.kv_bytes(kv)
    return apply


def stream(kv: sfe.KvState) -> sfe.Stream:
    return kv.modules[0][0]


def setattr_(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)


def set_embedding(sf: sfe.StateFile, values: Callable[[np.ndarray], np.ndarray]) -> None:
    embeddings = sf.slots[0].embeddings
    media_id, old = embeddings[0]
    embeddings[0] = (media_id, values(old.copy()))


def with_nan(v: np.ndarray, value: float) -> np.ndarray:
    v[len(v) // 2] = value
    return v


def cells(sf: sfe.StateFile) -> int:
    return sum(i.n_cells for i in entry(sf).items)


def drop_a_layer(kv: sfe.KvState) -> None:
    stream(kv).k.pop()
    stream(kv).v.pop()


def double_a_row(kv: sfe.KvState) -> None:
    layer = stream(kv).k[1]
    layer.row, layer.data = 2 * layer.row, 2 * layer.data


KV = "a saved KV sequence is damaged: "
ITEM = "a saved prompt item is not a token of this model or an image chunk"
# (name, edit of the parsed file, the reason; a callable reason gets the unedited file)
INNER: list[tuple[str, Callable[[sfe.StateFile], None], Any]] = [
    ("token-n_vocab", lambda sf: setattr_(entry(sf).items[1], "token", 832), ITEM),
    ("token-int32-max", lambda sf: setattr_(entry(sf).items[1], "token", 2**31 - 1), ITEM),
    ("token-negative", lambda sf: setattr_(entry(sf).items[1], "token", -2), ITEM),
    ("token-with-media-id", lambda sf: setattr_(entry(sf).items[1], "media_id", media(sf).media_id), ITEM),
    ("token-two-positions", lambda sf: setattr_(entry(sf).items[1], "n_pos", 2), ITEM),
    ("media-id-uppercase", lambda sf: setattr_(media(sf), "media_id", media(sf).media_id.upper()), ITEM),
    ("media-id-short", lambda sf: setattr_(media(sf), "media_id", "img-0123#0"), ITEM),
    ("media-id-no-prefix", lambda sf: setattr_(media(sf), "media_id", "pic-" + media(sf).media_id[4:]), ITEM),
    ("media-id-hash-misplaced", lambda sf: setattr_(media(sf), "media_id", media(sf).media_id[:-3] + "#0#0"), ITEM),
    ("media-id-empty", lambda sf: setattr_(media(sf), "media_id", ""), ITEM),
    ("media-no-cells", lambda sf: setattr_(media(sf), "n_cells", 0), ITEM),
    ("media-n-cells-huge", lambda sf: setattr_(media(sf), "n_cells", 10**6),
     lambda sf: f"a saved sequence does not fit this context ({cells(sf) - 16 + 10**6} cells)"),
    ("media-n-cells-int32-max", lambda sf: setattr_(media(sf), "n_cells", 2**31 - 1),
     lambda sf: f"a saved sequence does not fit this context ({cells(sf) - 16 + 2**31 - 1} cells)"),
    ("no-items", lambda sf: entry(sf).items.clear(), "a saved sequence does not fit this context (0 cells)"),
    ("turn-end-past-items", lambda sf: setattr_(entry(sf), "turn_end", len(entry(sf).items) + 1),
     lambda sf: f"a saved sequence does not fit this context ({cells(sf)} cells)"),
    ("media-id-65-bytes", lambda sf: setattr_(media(sf), "media_id", "img-" + "0" * 61),
     "a text field is 65 bytes long"),
    ("image-id-malformed", lambda sf: setattr_(sf.slots[0], "image_used", [("img-xyz", 1)]),
     "an image id is malformed"),
    ("image-id-with-chunk", lambda sf: setattr_(sf.slots[0], "image_used", [(media(sf).media_id, 1)]),
     "an image id is malformed"),
    ("caption-image-id-malformed", lambda sf: setattr_(sf.slots[0], "captions", [("img-1", "q", "a caption")]),
     "a caption's image id is malformed"),
    # (a caption the next turn looks up reached Python as bytes that are no str: UnicodeDecodeError)
    ("caption-not-utf8", lambda sf: setattr_(sf.slots[0], "captions", [(media(sf).media_id[:20], "Compare them.",
                                                                        "\udcff\udcfe caption")]),
     "a caption or its query is not valid UTF-8"),
    ("caption-query-not-utf8", lambda sf: setattr_(sf.slots[0], "captions", [(media(sf).media_id[:20], "\udcc3",
                                                                              "a caption")]),
     "a caption or its query is not valid UTF-8"),
    ("kv-one-cell-fewer", kv_edit(lambda kv: sfe.drop_last_cell(stream(kv))),
     lambda sf: KV + f"it holds {cells(sf) - 1} cells where its conversation has {cells(sf)}"),
    ("kv-cell-count-past-context", kv_edit(lambda kv: setattr_(stream(kv), "n_cells", N_CTX + 1)),
     KV + f"it holds {N_CTX + 1} cells, more than this context's {N_CTX}"),
    # one cell more than written: the layer header (v_trans 0, 2 layers) is read as its position and sequence count
    ("kv-cell-count-without-its-cells", kv_edit(lambda kv: setattr_(stream(kv), "n_cells", len(stream(kv).pos) + 1)),
     KV + "a cell belongs to 2 sequences, not 1"),
    ("kv-no-cells", kv_edit(lambda kv: setattr_(kv, "modules", [[sfe.Stream([], [])]])),
     lambda sf: KV + f"it holds 0 cells where its conversation has {cells(sf)}"),
    ("kv-a-layer-fewer", kv_edit(drop_a_layer),
     KV + "its layers (count, types or row sizes) differ from this context's"),
    ("kv-k-type", kv_edit(lambda kv: setattr_(stream(kv).k[0], "type", 0)),
     KV + "its layers (count, types or row sizes) differ from this context's"),
    ("kv-v-type-out-of-range", kv_edit(lambda kv: setattr_(stream(kv).v[1], "type", 256)),
     KV + "a V layer header is out of range"),
    ("kv-k-row-size", kv_edit(double_a_row),
     KV + "its layers (count, types or row sizes) differ from this context's"),
    ("kv-k-row-zero", kv_edit(lambda kv: setattr_(stream(kv).k[0], "row", 0)), KV + "a K layer header is out of range"),
    ("kv-v-trans-2", kv_edit(lambda kv: setattr_(stream(kv), "v_trans", 2)), KV + "its layer header is out of range"),
    ("kv-position-huge", kv_edit(lambda kv: stream(kv).pos.__setitem__(5, 10**6)),
     KV + "a cell's position 1000000 is out of range"),
    ("kv-position-negative", kv_edit(lambda kv: stream(kv).pos.__setitem__(0, -1)),
     KV + "a cell's position -1 is out of range"),
    ("kv-position-one-past-the-conversation", kv_edit(lambda kv: stream(kv).pos.__setitem__(3, len(stream(kv).pos))),
     lambda sf: KV + f"a cell's position {cells(sf)} is out of range"),
    # the tiny llama's cells take one position each: a forged layout with two cells at one
    # position would load and then fail every later turn of the conversation
    ("kv-two-cells-at-one-position", kv_edit(lambda kv: stream(kv).pos.__setitem__(3, stream(kv).pos[2])),
     lambda sf: KV + f"two cells are at position {stream(entry(sf).kv()).pos[2]}"),
    ("kv-cell-in-two-sequences", kv_edit(lambda kv: stream(kv).seq_ids.__setitem__(2, [0, 1])),
     KV + "a cell belongs to 2 sequences, not 1"),
    ("kv-magic", kv_edit(lambda kv: setattr_(kv, "magic", kv.magic ^ 1)), KV + "its header is not llama.cpp's"),
    ("kv-sequence-id", kv_edit(lambda kv: setattr_(kv, "seq_id", -1)), KV + "its header is not llama.cpp's"),
    ("kv-no-streams", kv_edit(lambda kv: setattr_(kv, "modules", [[]])), KV + "its stream count 0 is out of range"),
    ("kv-two-streams", kv_edit(lambda kv: kv.modules[0].append(sfe.Stream([], []))),
     KV + "its stream count differs from this context's"),
    ("kv-a-second-module", kv_edit(lambda kv: kv.modules.append(kv.modules[0])),
     KV + "it has bytes after its last module"),
    ("kv-trailing-bytes", kv_edit(lambda kv: setattr_(kv, "trailing", b"\0" * 4)),
     KV + "it has bytes after its last module"),
    ("kv-cut-short", lambda sf: setattr_(entry(sf), "state", entry(sf).state[:-1]), KV + "it ends inside its data"),
    ("kv-empty", lambda sf: setattr_(entry(sf), "state", b""), KV + "it ends inside its data"),
    ("embedding-nan", lambda sf: set_embedding(sf, lambda v: with_nan(v, float("nan"))),
     "an encoder output holds NaN or infinity"),
    ("embedding-infinity", lambda sf: set_embedding(sf, lambda v: with_nan(v, -float("inf"))),
     "an encoder output holds NaN or infinity"),
    ("embedding-not-whole-rows", lambda sf: set_embedding(sf, lambda v: v[:-1]),
     "an encoder output has the wrong size for this model"),
    ("embedding-empty", lambda sf: set_embedding(sf, lambda v: v[:0]),
     "an encoder output has the wrong size for this model"),
    ("embedding-id-malformed", lambda sf: setattr_(sf.slots[0], "embeddings",
                                                   [("img-x#0", sf.slots[0].embeddings[0][1])]),
     "an encoder output's image id is malformed"),
    ("trailing-bytes", lambda sf: setattr_(sf, "trailing", b"\0"), "it has bytes after its last slot"),
    ("history-too-long", lambda sf: setattr_(sf.slots[0], "history", [[1]] * 65),
     "a count (65) exceeds what the file holds"),
    ("fingerprint-line-changed", lambda sf: setattr_(sf, "fingerprint", sf.fingerprint.replace("n_gpu_layers=0",
                                                                                              "n_gpu_layers=99")),
     "it was written for another model or context: n_gpu_layers is 99 in the file, 0 here"),
    ("fingerprint-line-added", lambda sf: setattr_(sf, "fingerprint", sf.fingerprint + "extra=1\n"),
     "it was written for another model or context: extra is 1 in the file, (none) here"),
    ("fingerprint-empty", lambda sf: setattr_(sf, "fingerprint", ""),
     "it was written for another model or context: format is (none) in the file, 1 here"),
]


@pytest.mark.parametrize("name, edit, reason", INNER, ids=[c[0] for c in INNER])
def test_a_wrong_field_behind_a_good_checksum_is_refused(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path,
                                                         name: str, edit: Callable[[sfe.StateFile], None],
                                                         reason: Any) -> None:
    assert n_vocab(tiny_model) == 832  # the token cases' boundary
    sf = sfe.parse(saved.data)
    expected = reason(sfe.parse(saved.data)) if callable(reason) else reason
    edit(sf)
    assert_refused(tiny_model, write(tmp_path, sfe.to_bytes(sf)), expected)


@pytest.mark.parametrize("field, value, reason", [
    ("n_slots", 1025, "a count (1025) exceeds what the file holds"),
    ("slot0.n_saved", 2**32 - 1, "a count (4294967295) exceeds what the file holds"),
    ("slot0.entry0.n_items", N_CTX + 1, f"a count ({N_CTX + 1}) exceeds what the file holds"),
    ("slot0.entry0.state_length", 2**64 - 1, "it ends inside its data (truncated?)"),
    ("slot0.entry0.item3.media_id.length", 2**32 - 1, "a text field is 4294967295 bytes long"),
    ("slot0.n_captions", 2**20 + 1, "a count (1048577) exceeds what the file holds"),
    ("slot0.embedding0.n_floats", 2**61, "an encoder output has the wrong size for this model"),
    ("fingerprint.length", 2**26 + 1, "a text field is 67108865 bytes long"),
])
def test_a_count_or_length_past_the_file_is_refused(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path,
                                                    field: str, value: int, reason: str) -> None:
    (f,) = [x for x in sfe.fields(saved.data) if x.name == field]
    assert_refused(tiny_model, write(tmp_path, sfe.set_field(saved.data, f, value)), reason)


def test_a_body_length_that_wraps_past_two_to_the_64_is_refused(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    # a length of 2^64 - 8 + k over k bytes: length + 8 wraps to the bytes left
    for k in range(8):
        path = write(tmp_path, sfe.MAGIC + struct.pack("<IQ", 1, 2**64 - 8 + k) + b"\0" * k, f"wrap-{k}.ecso")
        assert_refused(tiny_model, path, "its length does not match its header (truncated?)")


def test_edits_that_keep_the_file_valid_load(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    """The edits above fail for the field they change, not for the rewriting: a resealed file whose
    fields all stay in range loads."""
    assert Session(tiny_model, state=write(tmp_path, sfe.to_bytes(sfe.parse(saved.data)))).state_status == "loaded"
    sf = sfe.parse(saved.data)
    entry(sf).items[1].token = n_vocab(tiny_model) - 1  # the last id of the vocabulary
    entry(sf).used = 2**64 - 1
    sf.slots[0].history.append([])
    path = write(tmp_path, sfe.to_bytes(sf), "edited.ecso")
    session = Session(tiny_model, EcsoConfig(verdict_override=True), state=path)
    assert session.state_status == "loaded"
    # the edited token no longer matches the conversation from there on: less is reused, same answer
    r = session.chat(saved.messages, max_tokens=10)
    reference = Session(tiny_model, EcsoConfig(verdict_override=True, reuse_kv=False)).chat(saved.messages,
                                                                                            max_tokens=10)
    assert steps(r) == steps(reference) and reused(r) == 1


# --- atomic saves under kill -9 -----------------------------------------------------------------------

SAVER = """
import sys
import numpy as np
import ecso_edge
from ecso_edge import EcsoConfig, Session
text, mmproj, path = sys.argv[1:4]
session = Session(ecso_edge.Model(text, mmproj, n_threads=1, n_ctx=2048), EcsoConfig(verdict_override=True))
for seed, query in ((0, "What is this?"), (1, "And this one?")):
    image = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    session.chat([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": query}]}],
                 max_tokens=24)
n = 0
while True:
    session.save_state(path)
    n += 1
    print(f"saved {n}", flush=True)
"""


@pytest.mark.parametrize("saves", [1, 2, 5, 9])
def test_a_save_killed_at_any_moment_leaves_a_file_that_loads(tiny_model: ecso_edge.Model, tmp_path: Path,
                                                              saves: int) -> None:
    """The child saves in a loop and says so after each save; it is killed as soon as it has said
    so `saves` times, most likely inside the next save."""
    path = tmp_path / "state.ecso"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tiny_model.text_model_path),
                             str(tiny_model.mmproj_path), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = 0
        for line in proc.stdout:
            assert line == f"saved {lines + 1}\n"
            lines += 1
            if lines == saves:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the child ended before it could be killed"
    left = set(os.listdir(tmp_path))
    assert left <= {"state.ecso", f"state.ecso.tmp.{proc.pid}"}, left
    assert "state.ecso" in left
    session = Session(tiny_model, EcsoConfig(verdict_override=True), state=path)
    assert session.state_status == "loaded"
    assert {k: session.cache_info()[k] for k in ("conversations", "images")} == {"conversations": 2, "images": 2}


def test_a_leftover_temporary_file_changes_nothing(saved: Saved, tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    path = write(tmp_path, saved.data)
    (tmp_path / "state.ecso.tmp.1").write_bytes(saved.data[:100])  # a save killed in another process
    (tmp_path / f"state.ecso.tmp.{os.getpid()}").write_bytes(b"x" * 10)  # one of this pid's, killed earlier
    session = Session(tiny_model, EcsoConfig(verdict_override=True), state=path)
    assert session.state_status == "loaded"
    converse(session, TURNS[:1])
    session.save_state()
    # this process's save wrote over its own leftover and renamed it; the other is not its to touch
    assert sorted(os.listdir(tmp_path)) == ["state.ecso", "state.ecso.tmp.1"]
    assert Session(tiny_model, state=path).state_status == "loaded"


# --- save errors --------------------------------------------------------------------------------------

def test_save_state_errors_name_the_path_and_the_cause(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    session = warm_session(tiny_model)
    missing = tmp_path / "no-such-folder" / "state.ecso"
    with pytest.raises(StateFileError) as e:
        session.save_state(missing)
    assert str(e.value) == (f"cannot write the state file {missing}: cannot create {missing}.tmp.{os.getpid()} (No "
                            "such file or directory); check that its folder exists and is writable, and that the disk "
                            "has room")
    with pytest.raises(ConfigError) as folder:
        session.save_state(tmp_path)
    assert str(folder.value) == (f"path {str(tmp_path)!r} is a folder; give the state file's path (e.g. "
                                 f"{tmp_path}/state.ecso)")
    with pytest.raises(ConfigError, match=r"^state '.*' is a folder"):
        Session(tiny_model, state=tmp_path)
    with pytest.raises(ConfigError, match=r"^save_state needs a path \(or a Session made with state=PATH\)$"):
        session.save_state()
    for bad, message in (("", "^path must be a file path, not an empty string$"),
                         ("a\0b", "^path contains a NUL character$")):
        with pytest.raises(ConfigError, match=message):
            session.save_state(bad)
    assert os.listdir(tmp_path) == []


# (None is no state file for Session and the state= file for save_state: load_state only; bytes
# are a path, as Model's paths are)
@pytest.mark.parametrize("call, value", [(c, v) for c in ("save_state", "load_state", "Session")
                                         for v in (5, None, ["state.ecso"])
                                         if v is not None or c == "load_state"])
def test_a_path_of_another_type_is_a_type_error_naming_the_argument(tiny_model: ecso_edge.Model, call: str,
                                                                    value: Any) -> None:
    with pytest.raises(TypeError) as e:
        if call == "Session":
            Session(tiny_model, state=value)
        else:
            getattr(Session(tiny_model), call)(value)
    name = "state" if call == "Session" else "path"
    assert str(e.value) == f"{name} must be a path (str or os.PathLike), not {type(value).__name__}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_save_state_into_a_read_only_folder_is_a_state_file_error(tiny_model: ecso_edge.Model, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StateFileError) as e:
            warm_session(tiny_model).save_state(folder / "state.ecso")
        assert "(Permission denied); check that its folder exists and is writable" in str(e.value)
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_the_reference_path_keeps_nothing_to_save(tiny_model: ecso_edge.Model, tmp_path: Path, saved: Saved) -> None:
    reference = Session(tiny_model, EcsoConfig(reuse_kv=False))
    with pytest.raises(ConfigError, match="^save_state needs reuse_kv: the reference path keeps nothing between "
                                          "calls$"):
        reference.save_state(tmp_path / "state.ecso")
    with pytest.raises(ConfigError, match="^load_state needs reuse_kv"):
        reference.load_state(write(tmp_path, saved.data))
    with pytest.raises(ConfigError, match="^state= needs reuse_kv"):
        Session(tiny_model, EcsoConfig(reuse_kv=False), state=tmp_path / "state.ecso")
    assert sorted(os.listdir(tmp_path)) == ["state.ecso"]


# --- parallel sessions --------------------------------------------------------------------------------

@pytest.mark.parametrize("saver, loader", [(2, 1), (1, 2), (2, 2)])
def test_a_file_moves_between_parallel_and_single_lane_sessions(tiny_model: ecso_edge.Model, tmp_path: Path,
                                                                saver: int, loader: int) -> None:
    config = EcsoConfig(verdict_override=False)
    a = Session(tiny_model, config, parallel=saver)
    messages = follow_up(converse(a, TURNS[:3]), TURNS)
    path = tmp_path / "state.ecso"
    a.save_state(path)
    assert len(sfe.parse(path.read_bytes()).slots) == saver
    del a  # sessions on a Model share their entries: only the file may serve b
    gc.collect()
    alone = Session(tiny_model, config)
    converse(alone, TURNS[:3])
    expected = alone.chat(messages, max_tokens=10)
    del alone
    gc.collect()
    b = Session(tiny_model, config, parallel=loader, state=path)
    assert b.state_status == "loaded" and b.cache_info()["conversations"] == 1
    r = b.chat(messages, max_tokens=10)
    assert b.cache_info()["shared_hits"] == 0
    assert steps(r) == steps(expected)
    assert reused(r) == reused(expected) > 0 and r.stats["image_encodes"] == 0
