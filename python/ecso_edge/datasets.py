"""Readers for the dataset formats users bring to the data engine: plain JSONL/JSON records
(`id`, `image`, `query`), the VLGuard train/test file, and MM-SafetyBench question files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import ConfigError

__all__ = ["Record", "read_records", "FORMATS"]

FORMATS = ("auto", "jsonl", "vlguard", "mm-safetybench")
# MM-SafetyBench pairs each image variant with its own question field.
MM_SAFETYBENCH_QUESTION = {"SD": "Rephrased Question(SD)", "TYPO": "Rephrased Question", "SD_TYPO": "Rephrased Question"}


@dataclass(frozen=True)
class Record:
    id: str
    image: str  # as written in the dataset (relative to the image root, or absolute)
    query: str

    def image_path(self, image_root: Optional[Path]) -> Path:
        path = Path(self.image)
        return path if path.is_absolute() or image_root is None else image_root / path


def read_records(path: Path, *, fmt: str = "auto", variant: str = "SD") -> Iterator[Record]:
    """The records of `path`, in file order. Raises ConfigError naming the file and the problem."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format '{fmt}': use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"input file '{path}' not found")
    text = path.read_text(encoding="utf-8")
    if fmt == "auto":
        fmt = _detect(path, text)
    if fmt == "jsonl":
        yield from _plain(path, text)
    elif fmt == "vlguard":
        yield from _vlguard(path, _load_json(path, text))
    else:
        yield from _mm_safetybench(path, _load_json(path, text), variant)


def _detect(path: Path, text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" not in stripped.strip():
        data = _load_json(path, text)
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            return "mm-safetybench"
    if stripped.startswith("["):
        data = _load_json(path, text)
        if isinstance(data, list) and data and isinstance(data[0], dict) and "instr-resp" in data[0]:
            return "vlguard"
    return "jsonl"


def _load_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"input file '{path}': not valid JSON ({e})") from e


def _require(path: Path, where: str, item: Any, key: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get(key), (str, int)):
        raise ConfigError(f"input file '{path}', {where}: missing the string field '{key}'")
    return str(item[key])


def _plain(path: Path, text: str) -> Iterator[Record]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = _load_json(path, text)
        for i, item in enumerate(items):
            yield _plain_record(path, f"item {i}", item, i + 1)
        return
    number = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        number += 1
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"input file '{path}', line {lineno}: not valid JSON ({e})") from e
        yield _plain_record(path, f"line {lineno}", item, number)


def _plain_record(path: Path, where: str, item: Any, number: int) -> Record:
    """`number`: the record's 1-based place in the file. A record without an `id` (VLSafe's) is
    named `<image>#<number>`: VLSafe asks several queries about one image, and the data engine's
    resume and SFT output need an id per record."""
    # VLSafe writes image_id; some exports write question: accept both, report the canonical name
    has = item if isinstance(item, dict) else {}
    query_key = "question" if "query" not in has and "question" in has else "query"
    image_key = "image_id" if "image" not in has and "image_id" in has else "image"
    image = _require(path, where, item, image_key)
    return Record(
        id=_require(path, where, item, "id") if "id" in has else f"{image}#{number}",
        image=image,
        query=_require(path, where, item, query_key),
    )


def _vlguard(path: Path, items: Any) -> Iterator[Record]:
    if not isinstance(items, list):
        raise ConfigError(f"input file '{path}': a VLGuard file is a JSON list")
    for i, item in enumerate(items):
        base = _require(path, f"item {i}", item, "id")
        image = _require(path, f"item {i}", item, "image")
        for k, pair in enumerate(item.get("instr-resp") or []):
            for key in ("safe_instruction", "unsafe_instruction", "instruction"):
                if isinstance(pair, dict) and isinstance(pair.get(key), str):
                    yield Record(id=f"{base}-{k}", image=image, query=pair[key])
                    break


def _mm_safetybench(path: Path, items: Any, variant: str) -> Iterator[Record]:
    if variant not in MM_SAFETYBENCH_QUESTION:
        raise ConfigError(f"unknown MM-SafetyBench variant '{variant}': use SD, TYPO or SD_TYPO")
    if not isinstance(items, dict):
        raise ConfigError(f"input file '{path}': an MM-SafetyBench question file is a JSON object")
    scenario = path.stem
    field = MM_SAFETYBENCH_QUESTION[variant]
    for key, item in items.items():
        query = _require(path, f"question {key}", item, field)
        yield Record(id=f"{scenario}-{variant}-{key}", image=f"{scenario}/{variant}/{key}.jpg", query=query)
