"""The evaluation's report files: the Markdown table (each rate with its 95 % Wilson interval, and
ECSO - Direct with McNemar's exact p), the same table in the paper's layout, the CSV, the JSON
(every item with its texts and verdicts; `ecso-edge report` draws everything again from it), and
the figure and the HTML page beside them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

from ..judges.keyword import REFUSAL_PHRASES, SOURCE
from . import stats
from .plotting import matplotlib_missing
from .tally import JUDGE_METRICS, EvalReport, Tally, upgrade_item

LEGEND = ("Harmless rate (%) [95 % Wilson interval] by each metric; ECSO - Direct: the paired difference in "
          "percentage points and McNemar's exact p (Direct and ECSO answer the same items); trigger unsafe: "
          "how often ECSO's own judge took the eyes-closed path (it picks the branch, so it is no metric); "
          "not judged: items an independent judge failed on, counted apart")


def trigger_line(run: Optional[dict[str, Any]]) -> str:
    """Who decided ECSO's branch in the run, for the report's readers."""
    trigger = (run or {}).get("trigger", "self")
    if trigger == "self":
        return "ECSO's trigger (step 2): the model's own self-judge."
    return (f"ECSO's trigger (step 2): the guard model {trigger}, which is also the guard metric. Every answer it "
            "called unsafe was replaced, so by the guard metric ECSO cannot score below Direct: read its "
            "difference as the trigger's, and the keyword and api metrics as the independent ones.")


def header(report: EvalReport) -> list[str]:
    """The table's columns: per metric Direct, ECSO and their difference (and, for an
    independent judge, the items it failed on), then the trigger's unsafe rate."""
    out = ["scenario", "n"]
    for metric in report.metrics:
        out += [f"Direct ({metric})", f"ECSO ({metric})", f"ECSO - Direct ({metric})"]
        if metric in JUDGE_METRICS:
            out.append(f"not judged ({metric})")
    return out + ["trigger unsafe"]


def rows_of(report: EvalReport) -> list[tuple[str, Tally]]:
    """The scenarios in the benchmark's order, then all items pooled."""
    return list(report.per_scenario.items()) + [("overall", report.overall())]


def fmt_p(p: Optional[float]) -> str:
    """"p = 0.125", "p < 0.001", or "p n/a" without items."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_rate(r: stats.Rate) -> str:
    if r.n == 0:
        return "n/a"
    return f"{100 * r.value:.1f} [{100 * r.low:.1f}, {100 * r.high:.1f}]"


def fmt_difference(d: stats.PairedDifference) -> str:
    if d.n == 0:
        return "n/a"
    return f"{100 * d.difference:+.1f}, {fmt_p(d.p_value)}"


def table_cells(report: EvalReport) -> list[list[str]]:
    """header()'s cells, one row per scenario and the pooled row last (Markdown and HTML share them)."""
    out = []
    for name, t in rows_of(report):
        row = [name, str(t.n)]
        for metric in report.metrics:
            row += [fmt_rate(t.rate(f"direct_{metric}")), fmt_rate(t.rate(f"ecso_{metric}")),
                    fmt_difference(t.paired(metric))]
            if metric in JUDGE_METRICS:
                row.append(str(t.failed[metric]))
        out.append(row + [fmt_rate(t.rate("unsafe_rate"))])
    return out


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_table(report: EvalReport) -> str:
    rows = table_cells(report)
    rows[-1][0] = "**overall**"
    return _markdown(header(report), rows)


def paper_table(report: EvalReport) -> str:
    """The paper's layout: rows are the scenarios, columns Direct and ECSO per metric, point rates,
    and last the mean of the scenarios' rates, as the paper averages them."""
    names = report.verdicts()
    columns = ["scenario"] + [f"{who} ({metric})" for metric in report.metrics for who in ("Direct", "ECSO")]
    rows, means = [], []
    for name, t in report.per_scenario.items():
        rates = [t.rate(v) for v in names]
        rows.append([name] + [f"{100 * r.value:.1f}" if r.n else "n/a" for r in rates])
        if all(r.n for r in rates):
            means.append([100 * r.value for r in rates])  # unrounded
    if means:
        rows.append(["**average**"] + [f"{sum(col) / len(col):.1f}" for col in zip(*means)])
    return _markdown(columns, rows)


def _pct(x: float, digits: int = 2) -> Optional[float]:
    return None if math.isnan(x) else round(100 * x, digits)


def _tally_json(t: Tally, report: EvalReport) -> dict[str, Any]:
    intervals = {}
    for name in report.verdicts() + ("unsafe_rate",):
        r = t.rate(name)
        intervals[name] = {"k": r.k, "n": r.n, "rate": _pct(r.value, 6), "low": _pct(r.low, 6),
                           "high": _pct(r.high, 6)}
    paired = {}
    for metric in report.metrics:
        d = t.paired(metric)
        paired[metric] = {"difference": _pct(d.difference, 6), "direct_only": d.direct_only,
                          "ecso_only": d.ecso_only, "p_value": d.p_value}
    # counts at the top (n, errors, harmless items per verdict, discordant pairs), rates in percent below
    return {**t.to_json(report.metrics), "intervals": intervals, "paired": paired}


def write_csv(report: EvalReport, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        rates = report.verdicts() + ("unsafe_rate",)
        head = ["scenario", "n", "errors"]
        for name in rates:
            head += [name, f"{name}_low", f"{name}_high"]
        for metric in report.metrics:
            head += [f"{metric}_judged", f"{metric}_failed", f"{metric}_difference", f"{metric}_direct_only",
                     f"{metric}_ecso_only", f"{metric}_p"]
        w.writerow(head)
        for name, t in rows_of(report):
            row: list[Any] = [name, t.n, t.errors]
            for rate_name in rates:
                r = t.rate(rate_name)
                row += [_pct(r.value), _pct(r.low), _pct(r.high)]
            for metric in report.metrics:
                d = t.paired(metric)
                row += [t.judged[metric], t.failed[metric], _pct(d.difference), d.direct_only, d.ecso_only,
                        None if d.p_value is None else f"{d.p_value:.6g}"]
            w.writerow(["" if v is None else v for v in row])


def report_json(report: EvalReport, title: str, run: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {
        "title": title,
        "run": run or {},
        "statistics": {"interval": stats.INTERVAL_METHOD, "paired_test": stats.PAIRED_METHOD,
                       "confidence": stats.CONFIDENCE, "units": "percent; differences in percentage points"},
        "metrics": list(report.metrics),
        "per_scenario": {k: _tally_json(v, report) for k, v in report.per_scenario.items()},
        "overall": _tally_json(report.overall(), report),
        "items": report.items,
        "refusal_phrases": {"source": SOURCE, "phrases": list(REFUSAL_PHRASES)},
    }


def prepare_out_dir(out_dir: Path) -> None:
    """Creates the report folder, or raises OutputError: eval calls it before its first item, so an
    unwritable --out-dir fails at once rather than after the run."""
    from ..errors import OutputError

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".ecso-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"report folder '{out_dir}': cannot write there ({e.strerror or e}): choose another "
                          "--out-dir") from None


def write_report(report: EvalReport, out_dir: Path, title: str, run: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """report.md, .csv, .json and .html, and the figure as report.png and report.svg when
    matplotlib is installed (without it the Markdown and HTML say how to get it). `run`: what
    produced the items (model files, EcsoConfig, options), kept in the JSON and shown in the HTML."""
    from ..errors import OutputError

    prepare_out_dir(out_dir)
    data = out_dir / "report.json"
    try:
        # the JSON first: it holds everything, and `ecso-edge report` draws the rest from it
        data.write_text(json.dumps(report_json(report, title, run), indent=2, ensure_ascii=False), encoding="utf-8")
    except OSError as e:
        raise OutputError(f"'{data}': cannot write the results ({e.strerror or e}): free space there or choose "
                          "another --out-dir") from None
    try:
        return {"json": data, **_write_views(report, out_dir, title, run)}
    except OSError as e:
        raise OutputError(f"report folder '{out_dir}': writing failed ({e.strerror or e}); report.json is complete: "
                          f"`ecso-edge report {out_dir}` writes the other files again") from None


def _write_views(report: EvalReport, out_dir: Path, title: str, run: Optional[dict[str, Any]]) -> dict[str, Path]:
    """Everything but report.json: the tables, the page and the figure."""
    from .eval_html import eval_html

    paths = {k: out_dir / f"report.{k}" for k in ("md", "csv", "html")}
    missing = matplotlib_missing()
    figure: dict[str, Path] = {}
    if missing is None:
        from .eval_figure import eval_figure
        from .plotting import save

        figure = save(eval_figure(report, title), out_dir / "report")
    shown = f"![harmless rates]({figure['png'].name})" if figure else f"No figure: {missing}."
    paths["md"].write_text(
        f"# {title}\n\n{LEGEND}.\n\n{trigger_line(run)}\n\n{markdown_table(report)}\n\n{shown}\n\n"
        f"## In the paper's layout\n\nHarmless rate (%); the last row is the mean of the scenarios' rates.\n\n"
        f"{paper_table(report)}\n", encoding="utf-8")
    write_csv(report, paths["csv"])
    paths["html"].write_text(eval_html(report, title, figure.get("png"), missing, run or {}), encoding="utf-8")
    return {**paths, **figure}


def read_report(path: Path) -> tuple[EvalReport, str, dict[str, Any]]:
    """The items, title and run of a report.json that write_report wrote; a ConfigError naming the file
    and what is wrong otherwise."""
    from ..errors import ConfigError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"'{path}' not found: give the folder eval wrote (its --out-dir) or its report.json") \
            from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"'{path}' cannot be read as JSON ({e}): give the report.json eval wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ConfigError(f"'{path}' is not an eval report (it has no list of items)")
    items = [upgrade_item(item) if isinstance(item, dict) else item for item in data["items"]]
    for i, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("scenario"), str) and isinstance(item.get("id"), str) \
            and isinstance(item.get("query"), str)
        if ok and "error" not in item:
            h = item.get("harmless")
            judges = item.get("judges", {})
            ok = isinstance(h, dict) and isinstance(judges, dict) and all(
                isinstance(h.get(f"{who}_keyword"), bool) for who in ("direct", "ecso")) and all(
                isinstance(h.get(f"{who}_{name}"), (bool, type(None))) and name in JUDGE_METRICS
                for name in judges for who in ("direct", "ecso")) and all(
                isinstance(item.get(k), str) for k in ("direct", "ecso", "verdict")) and isinstance(
                item.get("unsafe"), bool) and isinstance(item.get("caption"), (str, type(None)))
        if not ok:
            raise ConfigError(f"'{path}': item {i} is not an item of an eval report (an older ecso-edge wrote "
                              "no per-item verdicts; run the eval again)")
    run = data.get("run")
    return EvalReport.from_items(items), str(data.get("title", path.parent.name)), run if isinstance(run, dict) \
        else {}
