"""What ecso_bench.py reports: its targets and ratios, the judge modes' agreement with the paper's
judge and the printed table (the figure: chart.py). Also the Markdown tables that README.md and
bench/RESULTS.md show, computed from committed run JSONs:

    python bench/bench_report.py --update README.md bench/RESULTS.md

rewrites every block between `<!-- bench-table: KIND RUN.json ... -->` and `<!-- /bench-table -->`
(tests/test_bench.py checks that they are up to date)."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

# label: (numerator, denominator, limit); "ttft:" reads time to first token instead of totals.
TARGETS: dict[str, tuple[str, str, float]] = {
    "ecso_safe_s / llama_server_safe_s": ("ecso_safe", "llama_server_safe", 0.90),
    "ecso_unsafe_s / llama_server_unsafe_s": ("ecso_unsafe", "llama_server_unsafe", 0.90),
    "ecso_safe_continue_s / direct_s": ("ecso_safe_continue", "direct", 1.08),
    # re-set at the floor measured: the direct answer's first token over the safe path's is 0.50
    # on the bench pair, and the forced early exit stood at 0.78 of llama-server's unsafe path
    "ttft ecso_safe_incremental / ecso_safe": ("ttft:ecso_safe_incremental", "ttft:ecso_safe", 0.55),
    "ecso_unsafe_incremental_s / llama_server_unsafe_s": ("ecso_unsafe_incremental", "llama_server_unsafe", 0.75),
    "ecso_safe_s / direct_s": ("ecso_safe", "direct", 1.15),
    "ecso_unsafe_s / naive_unsafe_s": ("ecso_unsafe", "naive_unsafe", 0.5),
    "ecso_safe_s / naive_safe_s": ("ecso_safe", "naive_safe", 0.65),
}
RATIOS: dict[str, tuple[str, str]] = {
    "direct_s / llama_server_direct_s": ("direct", "llama_server_direct"),
    "ttft direct / llama_server_direct": ("ttft:direct", "ttft:llama_server_direct"),
    "ttft ecso_unsafe / llama_server_unsafe": ("ttft:ecso_unsafe", "ttft:llama_server_unsafe"),
    "ttft ecso_unsafe_incremental / ecso_unsafe": ("ttft:ecso_unsafe_incremental", "ttft:ecso_unsafe"),
    "ecso_safe_incremental_s / ecso_safe_s": ("ecso_safe_incremental", "ecso_safe"),
    "ecso_safe_logits_s / direct_s": ("ecso_safe_logits", "direct"),
    "ecso_safe_shadow_s / direct_s": ("ecso_safe_shadow", "direct"),
    "ecso_unsafe_s / reference_unsafe_s": ("ecso_unsafe", "reference_unsafe"),
}


def _value(r: dict[str, Any], key: str) -> Optional[float]:
    if key.startswith("ttft:"):
        return r["ttft_s"].get(key.removeprefix("ttft:"))
    return r.get(key + "_s")


def _ratio(r: dict[str, Any], num: str, den: str) -> Optional[float]:
    a, b = _value(r, num), _value(r, den)
    return None if a is None or b is None else a / b


def targets_of(r: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Optional[float]]]:
    """The targets (a ratio, its limit, met; None where a contender was not measured) and the other
    ratios."""
    targets: dict[str, Any] = {}
    for label, (num, den, limit) in TARGETS.items():
        v = _ratio(r, num, den)
        targets[label] = {"value": v, "limit": limit, "met": None if v is None else v <= limit}
    chunks = r["image_encodes"]["direct"]  # each media chunk once per request: the direct answer's count
    ours = [r["image_encodes"][n] for n in ("ecso_safe", "ecso_unsafe")]
    targets["image_encodes == direct's (ecso)"] = {"value": max(ours), "limit": chunks,
                                                   "met": all(v == chunks for v in ours)}
    peaks = r["peak_rss_mb"]
    rss = max(peaks["ecso_safe"], peaks["ecso_unsafe"]) / peaks["direct"]
    targets["peak_rss ecso / direct"] = {"value": rss, "limit": 1.1, "met": rss <= 1.1}
    targets["tokens identical to the reference path (paper preset)"] = {
        "value": r["tokens_identical"], "limit": True, "met": r["tokens_identical"]}
    ratios = {label: _ratio(r, num, den) for label, (num, den) in RATIOS.items()}
    return targets, ratios


def agreement_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per judge mode: the share of queries whose verdict equals the paper's judge's, and the mean
    P(yes) beside the paper's judge read by the logits rule."""
    modes = [m for m in rows[0] if m not in ("query", "paper")] if rows else []
    out: dict[str, Any] = {"queries": len(rows), "paper_said_yes": sum(row["paper"]["unsafe"] for row in rows)}
    for m in modes:
        same = sum(row[m]["unsafe"] == row["paper"]["unsafe"] for row in rows)
        p = [row[m]["p_yes"] for row in rows if row[m]["p_yes"] is not None]
        out[m] = {"verdict_same_as_paper": same, "share": same / len(rows),
                  "mean_p_yes": statistics.mean(p) if p else None,
                  "said_yes": sum(row[m]["unsafe"] for row in rows)}
    return out


def _fmt(v: Any, spec: str = "8.3f") -> str:
    if v is None:
        return f"{'n/a':>8s}"
    if isinstance(v, bool):
        return f"{'yes' if v else 'no':>8s}"
    return format(v, spec)


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{'contender':26s} {'median s':>9s} {'ttft s':>8s} {'encodes':>8s} {'prefilled':>10s} {'reused':>7s} "
          f"{'peak RSS MB':>12s}")
    for name in r["image_encodes"]:
        enc, reused = r["image_encodes"][name], r["tokens_reused"][name]
        print(f"{name:26s} {r[name + '_s']:9.3f} {r['ttft_s'][name]:8.3f} {'?' if enc is None else enc:>8} "
              f"{r['tokens_prefilled'][name]:10d} {'?' if reused is None else reused:>7} "
              f"{r['peak_rss_mb'].get(name, float('nan')):12.1f}")
    c = r["config"]
    print(f"(OMP_WAIT_POLICY {c['omp_wait_policy']}; a process per library, the others stopped while one is timed; "
          f"peak RSS: a child process per contender; llama-server: {r['llama_server']})")
    print(f"\ntokens identical to the reference path: {r['tokens_identical']}")
    print(f"\n{'target':52s} {'value':>8s} {'limit':>7s}  met")
    for label, t in r["targets"].items():
        limit = t["limit"] if isinstance(t["limit"], bool) else f"{t['limit']:7.2f}"
        met = "n/a (not measured)" if t["met"] is None else ("yes" if t["met"] else "NO")
        print(f"{label:52s} {_fmt(t['value'])} {limit!s:>7s}  {met}")
    for label, v in r["ratios"].items():
        print(f"{label:52s} {_fmt(v)}")
    tokens = r["config"]["tokens_per_step"]["answer"]
    print("\nthe direct answer, where the time goes (medians, s): prompt = image encode + prefill; decode per token")
    for name, p in r["direct_phases_s"].items():
        print(f"  {name:22s} prompt {p['prompt']:.3f}  decode {p['decode']:.3f} ({p['decode'] / (tokens - 1) * 1e3:.2f} ms "
              f"per token)  other {p['other']:.3f}")
    a = r["judge_agreement"]
    print(f"\njudge modes against the paper's judge over {a['queries']} queries (it said yes to {a['paper_said_yes']}):")
    for m, s in a.items():
        if isinstance(s, dict):
            print(f"  {m:16s} same verdict {s['verdict_same_as_paper']}/{a['queries']}, said yes {s['said_yes']}, "
                  f"mean P(yes) {_fmt(s['mean_p_yes'], '.4f').strip()}")


# ecso-edge's contender against llama-server's for the same path: (label, ours, theirs)
LLAMA_SERVER_PATHS = [("direct answer", "direct", "llama_server_direct"),
                      ("ECSO safe path (paper)", "ecso_safe", "llama_server_safe"),
                      ("ECSO unsafe path (paper)", "ecso_unsafe", "llama_server_unsafe")]
BLOCK = re.compile(r"(<!-- bench-table: (\S+) ([^>]*?) -->\n)(.*?)(<!-- /bench-table -->)", re.DOTALL)


def policy_of(r: dict[str, Any]) -> str:
    """The run's OpenMP wait policy as a column heading."""
    policy = str(r["config"]["omp_wait_policy"])
    return "default" if policy.startswith("unset") else f"`{policy}`"


def headings(runs: list[dict[str, Any]]) -> list[str]:
    """A column heading per run: its policy, numbered where several runs share one."""
    policies = [policy_of(r) for r in runs]
    return [f"{p}, run {policies[:i + 1].count(p)}" if policies.count(p) > 1 else p for i, p in enumerate(policies)]


def _cell(t: dict[str, Any]) -> str:
    v = t["value"]
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v) if isinstance(v, int) else f"{v:.3f}"


def _limit(label: str, limit: Any) -> str:
    if isinstance(limit, bool):
        return "yes" if limit else "no"
    if label.startswith("image_encodes"):
        return f"== {limit}"
    return f"<= {limit:.2f}"


def targets_markdown(runs: list[dict[str, Any]]) -> str:
    """Every target targets_of computes, met or missed: its value per run, its limit, and where it
    was met."""
    policies = headings(runs)
    tables = [targets_of(r)[0] for r in runs]
    lines = ["| target | " + " | ".join(policies) + " | limit | met |", "|---|" + "---|" * len(runs) + "---|---|"]
    for label in tables[0]:
        cells = [t[label] for t in tables]
        met = [p for p, t in zip(policies, cells) if t["met"]]
        where = "no" if not met else "yes" if len(met) == len(runs) else " and ".join(met) + " only"
        lines.append(f"| `{label}` | " + " | ".join(_cell(t) for t in cells) +
                     f" | {_limit(label, cells[0]['limit'])} | {where} |")
    return "\n".join(lines) + "\n"


def llama_server_markdown(runs: list[dict[str, Any]]) -> str:
    """ecso-edge's latency over llama-server's on each path, per run (OpenMP policy)."""
    lines = ["| path: ecso-edge s / llama-server s | " + " | ".join(headings(runs)) + " |",
             "|---|" + "---|" * len(runs)]
    for label, ours, theirs in LLAMA_SERVER_PATHS:
        cells = []
        for r in runs:
            a, b = r.get(ours + "_s"), r.get(theirs + "_s")
            cells.append("not measured" if a is None or b is None else
                         f"{a:.3f} / {b:.3f} = {a / b:.3f} ({abs(1 - a / b) * 100:.1f} % "
                         f"{'less' if a <= b else 'more'} time)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TABLES = {"targets": targets_markdown, "llama-server": llama_server_markdown}


def render_blocks(text: str, root: Path) -> str:
    """`text` with every bench-table block computed again from the run JSONs it names (paths from
    `root`)."""
    def fill(m: "re.Match[str]") -> str:
        runs = [json.loads((root / name).read_text()) for name in m.group(3).split()]
        return m.group(1) + TABLES[m.group(2)](runs) + m.group(5)

    return BLOCK.sub(fill, text)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="rewrite the bench-table blocks of Markdown files from their run JSONs")
    p.add_argument("--update", nargs="+", required=True, metavar="MARKDOWN")
    args = p.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    for name in args.update:
        path = Path(name)
        text = path.read_text()
        new = render_blocks(text, root)
        if new != text:
            path.write_text(new)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
