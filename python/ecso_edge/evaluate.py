"""Evaluation harness: Direct vs ECSO harmless rates on MM-SafetyBench, VLSafe, VLGuard or a plain
JSONL set, per scenario and overall, in the layout of the paper's tables.

ECSO's step 1 is the Direct answer, so each item costs one ECSO run. Its answers are scored by
metrics that do not decide ECSO's branch (docs/metrics.md):
- keyword: the answer opens with a refusal phrase of a published list (judges/keyword.py);
- guard: a guard model reads the query and the answer (`judges/guard.py`, docs/guard-formats.md);
- api: a chat endpoint prompted with MM-SafetyBench's evaluation prompts (judges/api_judge.py).
Both answers of an item go to the same judges. The self-judge is the trigger: it picks the
branch, so the report gives its unsafe rate and computes no harmless rate on it. The paper's
GPT-4 judge is the api metric pointed at such a model. The reports (tables with intervals and
paired tests, figures, HTML) are written by ecso_edge.report.eval_tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Sequence, Union

from ._core import CancelToken, EcsoResult
from .datasets import Record, read_records
from .errors import ConfigError, ImageError
from .judges.keyword import is_refusal
from .report.tally import EvalReport, Tally
from .session import Session

__all__ = ["load_benchmark", "evaluate", "EvalJudge", "EvalReport", "Tally", "BENCHMARKS"]

BENCHMARKS = ("mm-safetybench", "vlsafe", "vlguard", "jsonl")
# MM-SafetyBench scenarios the paper averages (01-07 and 09).
PAPER_SCENARIOS = ("01", "02", "03", "04", "05", "06", "07", "09")


class EvalJudge(Protocol):
    """An independent judge of answers: `name` is its metric ("guard" or "api")."""

    name: str
    description: str  # what it is, for the report ("Llama-Guard-3-1B.Q8_0.gguf, format llama-guard-3")

    def verdict(self, scenario: str, query: str, answer: str, cancel: Optional[CancelToken]) -> dict[str, Any]:
        """{"unsafe": True/False/None (None: it failed), "raw": its output, "error": why it failed or None}."""
        ...


def load_benchmark(
    benchmark: str, root: Path, *, variant: str = "SD", scenarios: Optional[Iterable[str]] = None
) -> tuple[list[tuple[str, Record]], Path]:
    """(scenario, record) pairs and the image root. For MM-SafetyBench `root` is the repository
    folder (data/processed_questions, data/imgs); for the others it is the dataset file, with the
    images next to it under images/ unless the records hold absolute paths."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{benchmark}': use one of {', '.join(BENCHMARKS)}")
    if benchmark == "mm-safetybench":
        questions = root / "data" / "processed_questions"
        if not questions.is_dir():
            raise ConfigError(f"'{questions}' not found: --root must be the MM-SafetyBench folder")
        wanted = tuple(scenarios) if scenarios else PAPER_SCENARIOS
        items = []
        for path in sorted(questions.glob("*.json")):
            if path.stem.split("-")[0] in wanted or path.stem in wanted:
                items += [(path.stem, r) for r in read_records(path, fmt="mm-safetybench", variant=variant)]
        if not items:
            raise ConfigError(f"no question file of scenarios {', '.join(wanted)} in '{questions}'")
        return items, root / "data" / "imgs"
    fmt = {"vlsafe": "jsonl", "vlguard": "vlguard", "jsonl": "jsonl"}[benchmark]
    records = list(read_records(root, fmt=fmt))
    image_root = root.parent / "images"
    if benchmark == "vlguard":
        # VLGuard's categories are the first folder of the image path
        return [(r.image.split("/")[0] if "/" in r.image else "all", r) for r in records], image_root
    return [("all", r) for r in records], image_root


def _outcomes(session: Session, items: list[tuple[str, Record]], image_root: Path, max_tokens: int,
              bar: Any) -> list[Union[EcsoResult, BaseException]]:
    """Each item's ECSO result, or the error that failed it; `parallel` at a time on a parallel session."""
    images = [record.image_path(image_root) for _, record in items]

    def tick(_i: int, _value: object) -> None:
        if bar is not None:
            bar.update(1)

    if session.parallel > 1:
        return session.run_many([(image, record.query) for image, (_, record) in zip(images, items)],
                                max_tokens=max_tokens, on_result=tick)
    results: list[Union[EcsoResult, BaseException]] = []
    for image, (_, record) in zip(images, items):
        try:
            results.append(session.run(image, record.query, max_tokens=max_tokens))
        except ImageError as e:
            results.append(e)
        tick(0, None)
    return results


def _judge_item(judge: EvalJudge, scenario: str, query: str, r: EcsoResult,
                cancel: Optional[CancelToken]) -> dict[str, dict[str, Any]]:
    # The Direct answer goes to the judge even when a guard model was the trigger: the trigger may
    # be another model or format than this judge, and both answers must have the same judge.
    direct = judge.verdict(scenario, query, r.initial_answer, cancel)
    # On the safe path ECSO's answer is the Direct answer: the same text gets the same verdict.
    ecso = judge.verdict(scenario, query, r.answer, cancel) if r.unsafe else dict(direct)
    return {"direct": direct, "ecso": ecso}


def _harmless(verdict: dict[str, Any]) -> Optional[bool]:
    return None if verdict["unsafe"] is None else not verdict["unsafe"]


def evaluate(
    session: Session, items: list[tuple[str, Record]], image_root: Path, *, max_tokens: int = 512,
    progress: bool = True, judges: Sequence[EvalJudge] = (), cancel: Optional[CancelToken] = None,
) -> EvalReport:
    """Runs every item and scores both answers with the keyword metric and each of `judges`
    (their names must differ). A judge that fails on an answer is recorded in the item and counted
    apart in the report; a bad image fails only its item."""
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ConfigError(f"two judges share a name ({', '.join(names)}): give each metric one judge")
    report = EvalReport()
    bar = None
    if progress:
        from tqdm import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=len(items) * (1 + len(judges)), unit="pass", desc="ecso eval")
    try:
        outcomes = _outcomes(session, items, image_root, max_tokens, bar)
        for (scenario, record), r in zip(items, outcomes):
            image = record.image_path(image_root)
            entry: dict[str, Any] = {"scenario": scenario, "id": record.id, "query": record.query,
                                     "image": str(image)}
            if isinstance(r, ImageError):
                entry["error"] = str(r)
            elif isinstance(r, BaseException):
                raise r
            else:
                entry.update(direct=r.initial_answer, ecso=r.answer, verdict=r.verdict_text, unsafe=r.unsafe,
                             judged_unsafe=r.judged_unsafe, caption=r.caption, trigger=r.judge_model,
                             harmless={"direct_keyword": is_refusal(r.initial_answer),
                                       "ecso_keyword": is_refusal(r.answer)}, judges={})
                for judge in judges:
                    verdicts = _judge_item(judge, scenario, record.query, r, cancel)
                    entry["judges"][judge.name] = verdicts
                    for who in ("direct", "ecso"):
                        entry["harmless"][f"{who}_{judge.name}"] = _harmless(verdicts[who])
            if bar is not None and judges:
                bar.update(len(judges))
            report.add(entry)
    finally:
        if bar is not None:
            bar.close()  # also before an error propagates: its message then starts on a line of its own
    return report


def describe_metrics(judges: Iterable[EvalJudge]) -> dict[str, str]:
    """What each metric of a run is, for the report's run record."""
    from .judges.keyword import SOURCE

    return {"keyword": f"the answer's first sentence holds a refusal phrase of {SOURCE}",
            **{j.name: j.description for j in judges}}
