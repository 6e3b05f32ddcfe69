"""ECSO as a data engine: runs every record of a dataset through ECSO and writes supervised
fine-tuning data in LLaVA's format, with no human labels.

Nothing is lost: each finished record is appended to a JSONL trace and flushed to disk before the
next one starts; `resume=True` skips the ids already traced (a half-written last line from a killed
run is discarded); the SFT JSON is rebuilt from the trace and replaced atomically at the end. A
record whose image cannot be loaded is traced with its error and the run goes on. A full disk
stops the run with an OutputError naming the file; the trace keeps every whole record. With a
Session(parallel=N), N records run together and each is traced as it ends."""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Optional, Union

from ._core import EcsoResult
from .atomic_file import replace_text_file
from .datasets import Record
from .errors import CancelledError, ConfigError, ImageError, OutputError
from .session import CancelToken, Session

__all__ = ["DataEngineSummary", "run_data_engine", "trace_path_for"]


@dataclass
class DataEngineSummary:
    records: int  # processed in this run
    skipped: int  # already in the trace (resume)
    unsafe: int
    errors: int
    sft_examples: int
    seconds: float


def trace_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".trace.jsonl")


def run_data_engine(
    session: Session,
    records: Iterable[Record],
    out: Path,
    *,
    image_root: Optional[Path] = None,
    resume: bool = False,
    limit: Optional[int] = None,
    max_tokens: int = 512,
    progress: bool = True,
) -> DataEngineSummary:
    """Runs ECSO over `records`; writes `out` (LLaVA SFT JSON) and `out`.trace.jsonl."""
    plan = plan_run(records, out, resume=resume, limit=limit)
    if session.parallel > 1:
        entries: Iterable[dict[str, Any]] = _entries_in_parallel(session, plan.todo, image_root, max_tokens)
    else:
        entries = (process_record(session, record, image_root, max_tokens) for record in plan.todo)
    return record_entries(plan, entries, out, progress=progress)


def _entries_in_parallel(session: Session, todo: list[Record], image_root: Optional[Path],
                         max_tokens: int) -> Iterator[dict[str, Any]]:
    """The records through `session.run_many`, yielded as each ends (completion order: the trace
    knows records by id, so resume and the SFT file do not depend on the order). The run is on a
    thread of its own, so the caller writes each entry while the others decode; leaving the loop
    (an error writing the trace, Ctrl-C) cancels it and waits for it to stop."""
    done: "queue.Queue[tuple[int, Union[EcsoResult, BaseException, None]]]" = queue.Queue()
    cancel = CancelToken()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            session.run_many([(r.image_path(image_root), r.query) for r in todo], max_tokens=max_tokens,
                             on_result=lambda i, value: done.put((i, value)), cancel=cancel)
        except BaseException as e:  # re-raised on the caller's thread
            failure.append(e)
        finally:
            done.put((-1, None))

    thread = threading.Thread(target=work, name="ecso-data-engine", daemon=True)
    thread.start()
    try:
        while True:
            i, value = done.get()
            if value is None:
                break
            yield _entry(todo[i], value)
        if failure and not isinstance(failure[0], CancelledError):
            raise failure[0]
    finally:
        cancel.cancel()
        thread.join()


@dataclass
class RunPlan:
    """What a run has to do: shared by the single-process and the Ray engine."""

    trace: Path
    selected: int  # input records after `limit`
    todo: list[Record]  # those not yet in the trace
    traced: int  # complete lines already in the trace (resume)


def plan_run(records: Iterable[Record], out: Path, *, resume: bool, limit: Optional[int]) -> RunPlan:
    """Checks the ids, applies `limit`, then drops the records already traced (resume) or the old trace."""
    selected = list(records)
    _check_unique_ids(selected)  # the whole input, before the trace is touched (a refused run keeps it)
    if limit is not None:
        selected = selected[:limit]  # the first `limit` input records, resumed or not
    trace = trace_path_for(out)
    done = _completed_ids(trace) if resume else set()
    if not resume and trace.exists():
        trace.unlink()
    return RunPlan(trace, len(selected), [r for r in selected if r.id not in done], len(done))


def _check_unique_ids(records: list[Record]) -> None:
    """The trace knows a record by its id: two records with one id would make --resume skip the
    second and the SFT file keep only one of them."""
    first: dict[str, int] = {}
    for n, record in enumerate(records, start=1):
        if record.id in first:
            raise ConfigError(
                f"input records {first[record.id]} and {n} have the same id '{record.id}': the data engine needs "
                "one id per record (to resume and to write each record once); give each its own id"
            )
        first[record.id] = n


def record_entries(
    plan: RunPlan, entries: Iterable[dict[str, Any]], out: Path, *, progress: bool
) -> DataEngineSummary:
    """Appends each trace entry as it arrives (fsynced), shows progress, then writes the SFT JSON."""
    t0 = time.perf_counter()
    unsafe = errors = 0
    bar = _progress(len(plan.todo), progress)
    plan.trace.parent.mkdir(parents=True, exist_ok=True)  # --out may name a folder not made yet
    try:
        with open(plan.trace, "ab", buffering=0) as f:
            for n_done, entry in enumerate(entries, start=plan.traced):
                unsafe += bool(entry.get("unsafe"))
                errors += "error" in entry
                _append_record(f, plan.trace, entry, n_done)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(unsafe=unsafe, errors=errors)
    finally:
        if bar is not None:
            bar.close()  # also before an error propagates: its message then starts on a line of its own
    n_sft = write_sft(plan.trace, out)
    skipped = plan.selected - len(plan.todo)
    return DataEngineSummary(len(plan.todo), skipped, unsafe, errors, n_sft, time.perf_counter() - t0)


def process_record(session: Session, record: Record, image_root: Optional[Path], max_tokens: int) -> dict[str, Any]:
    """One record through ECSO, as its trace entry (an unreadable image gives an entry with `error`)."""
    try:
        r: Union[EcsoResult, BaseException] = session.run(record.image_path(image_root), record.query,
                                                          max_tokens=max_tokens)
    except ImageError as e:
        r = e
    return _entry(record, r)


def _entry(record: Record, r: Union[EcsoResult, BaseException]) -> dict[str, Any]:
    """A record's trace entry from its result; an unreadable image gives an entry with `error`,
    any other failure stops the run (as it would have one record at a time)."""
    entry: dict[str, Any] = {"id": record.id, "image": record.image, "query": record.query}
    if isinstance(r, ImageError):
        entry["error"] = str(r)
        return entry
    if isinstance(r, BaseException):
        raise r
    entry.update(
        initial_answer=r.initial_answer,
        verdict_text=r.verdict_text,
        unsafe=r.unsafe,
        caption=r.caption,
        answer=r.answer,
        stats={k: v for k, v in r.stats.items() if k != "steps"},
    )
    return entry


def _append_record(f: BinaryIO, trace: Path, entry: dict[str, Any], n_done: int) -> None:
    """Appends one trace line and syncs it: a record counts as done only once it is on disk. When
    the write fails (disk full, file size limit), the trace is cut back to its last whole line
    and the error names the file and how many records it holds intact."""
    start = f.tell()
    data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        while data:
            written = f.write(data)
            if not written:
                raise OSError(errno.EIO, "the file accepted no bytes")
            data = data[written:]
        os.fsync(f.fileno())
    except OSError as e:
        try:
            os.ftruncate(f.fileno(), start)
        except OSError:
            pass  # resume drops a half-written last line anyway
        raise OutputError(
            f"cannot write the trace '{trace}': {e.strerror or e}. The {n_done} records traced before are intact; "
            "free some space and rerun with --resume"
        ) from e


def _completed_ids(trace: Path) -> set[str]:
    """Ids of complete trace lines; a half-written last line (killed run) is cut off."""
    if not trace.exists():
        return set()
    data = trace.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(trace, "r+b") as f:
            f.truncate(end)
    ids = set()
    for line in data[:end].decode("utf-8").splitlines():
        if line.strip():
            ids.add(str(json.loads(line)["id"]))
    return ids


def write_sft(trace: Path, out: Path) -> int:
    """Rebuilds the LLaVA SFT JSON from the trace and replaces `out` atomically."""
    examples = []
    seen = set()
    for line in trace.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        if "error" in e or e["id"] in seen:
            continue
        seen.add(e["id"])
        examples.append(
            {
                "id": e["id"],
                "image": e["image"],
                "conversations": [
                    {"from": "human", "value": "<image>\n" + e["query"]},
                    {"from": "gpt", "value": e["answer"]},
                ],
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_text_file(out, lambda f: json.dump(examples, f, ensure_ascii=False, indent=1))
    except OSError as e:
        raise OutputError(
            f"cannot write the SFT file '{out}': {e.strerror or e}. Every record is in the trace '{trace}'; "
            "free some space and rerun with --resume to rebuild the file"
        ) from e
    return len(examples)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, unit="rec", desc="ecso data-engine")
