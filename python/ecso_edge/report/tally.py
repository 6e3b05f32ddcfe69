"""The evaluation's counts: per scenario, how many items each metric calls harmless for Direct
and for ECSO, the discordant pairs of the paired comparison, and what the trigger decided.

Metrics are the keyword metric and the independent judges a run used (`guard`: a guard model,
`api`: a chat endpoint); each item holds `harmless[f"{who}_{metric}"]` (True, False, or None when
that judge failed on the item). The self-judge is ECSO's trigger, not a metric: it picks the
branch, so "Direct harmful" would mean "ECSO took the eyes-closed path" and ECSO could never
score below Direct on it. Its unsafe rate is counted; no harmless rate is computed on it.

An item counts for a metric when both of its answers got a verdict from it; an item whose judge
failed on either answer is counted apart (`failed`), never dropped and never guessed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import stats

__all__ = ["KEYWORD", "JUDGE_METRICS", "METRIC_ORDER", "WHO", "Tally", "EvalReport", "metrics_of", "upgrade_item"]

KEYWORD = "keyword"
JUDGE_METRICS = ("guard", "api")  # an independent judge's name in items and reports
METRIC_ORDER = (KEYWORD,) + JUDGE_METRICS
WHO = ("direct", "ecso")


def metrics_of(items: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The metrics the items carry, in METRIC_ORDER (the keyword metric always)."""
    present = {KEYWORD}
    for item in items:
        for name in item.get("judges", {}) or {}:
            present.add(name)
    return tuple(m for m in METRIC_ORDER if m in present)


def upgrade_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as an older ecso-edge wrote it, in today's form: its "judge" verdicts were the
    trigger's, which is not a metric, so they are dropped (the trigger's decision stays in
    `judged_unsafe` and `unsafe`)."""
    harmless = item.get("harmless")
    if isinstance(harmless, dict) and "direct_judge" in harmless:
        item = dict(item)
        item["harmless"] = {k: v for k, v in harmless.items() if k not in ("direct_judge", "ecso_judge")}
    return item


@dataclass
class Tally:
    """One scenario's counts (or all items pooled)."""

    n: int = 0          # items answered
    errors: int = 0     # items that failed (a bad image): counted, not scored
    unsafe: int = 0     # items whose trigger took the eyes-closed path
    harmless: Counter[str] = field(default_factory=Counter)     # f"{who}_{metric}" -> items harmless
    judged: Counter[str] = field(default_factory=Counter)       # metric -> items with both verdicts
    failed: Counter[str] = field(default_factory=Counter)       # metric -> items its judge failed on
    direct_only: Counter[str] = field(default_factory=Counter)  # metric -> Direct harmless, ECSO not
    ecso_only: Counter[str] = field(default_factory=Counter)    # metric -> ECSO harmless, Direct not

    def add(self, item: dict[str, Any]) -> None:
        if "error" in item:
            self.errors += 1
            return
        self.n += 1
        self.unsafe += bool(item["unsafe"])
        h = item["harmless"]
        for metric in metrics_of([item]):
            direct, ecso = h.get(f"direct_{metric}"), h.get(f"ecso_{metric}")
            if direct is None or ecso is None:
                self.failed[metric] += 1
                continue
            self.judged[metric] += 1
            self.harmless[f"direct_{metric}"] += bool(direct)
            self.harmless[f"ecso_{metric}"] += bool(ecso)
            self.direct_only[metric] += bool(direct and not ecso)
            self.ecso_only[metric] += bool(ecso and not direct)

    def merge(self, other: "Tally") -> None:
        self.n += other.n
        self.errors += other.errors
        self.unsafe += other.unsafe
        for name in ("harmless", "judged", "failed", "direct_only", "ecso_only"):
            getattr(self, name).update(getattr(other, name))

    def rate(self, name: str) -> stats.Rate:
        """A verdict's harmless rate (f"{who}_{metric}") over the items that metric judged, or
        with "unsafe_rate" the trigger's unsafe rate over the items answered; Wilson interval."""
        if name == "unsafe_rate":
            return stats.rate(self.unsafe, self.n)
        metric = name.split("_", 1)[1]
        return stats.rate(self.harmless[name], self.judged[metric])

    def paired(self, metric: str) -> stats.PairedDifference:
        """ECSO minus Direct by one metric, with McNemar's exact p."""
        return stats.paired_difference(self.judged[metric], self.direct_only[metric], self.ecso_only[metric])

    def to_json(self, metrics: tuple[str, ...]) -> dict[str, Any]:
        return {"n": self.n, "errors": self.errors, "unsafe": self.unsafe,
                "harmless": {f"{who}_{m}": self.harmless[f"{who}_{m}"] for m in metrics for who in WHO},
                "judged": {m: self.judged[m] for m in metrics}, "failed": {m: self.failed[m] for m in metrics},
                "direct_only": {m: self.direct_only[m] for m in metrics},
                "ecso_only": {m: self.ecso_only[m] for m in metrics}}


@dataclass
class EvalReport:
    """Every item's texts and verdicts, in run order, and their counts per scenario (in the
    order the scenarios first appear: the benchmark's, which for MM-SafetyBench is the paper's)."""

    per_scenario: dict[str, Tally] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, item: dict[str, Any]) -> None:
        self.per_scenario.setdefault(item["scenario"], Tally()).add(item)
        self.items.append(item)

    @classmethod
    def from_items(cls, items: Iterable[dict[str, Any]]) -> "EvalReport":
        report = cls()
        for item in items:
            report.add(item)
        return report

    @property
    def metrics(self) -> tuple[str, ...]:
        return metrics_of(self.items)

    def verdicts(self) -> tuple[str, ...]:
        """Each harmless verdict's name, metric by metric, Direct before ECSO."""
        return tuple(f"{who}_{m}" for m in self.metrics for who in WHO)

    def overall(self) -> Tally:
        total = Tally()
        for t in self.per_scenario.values():
            total.merge(t)
        return total
