"""The benchmarks' figures, drawn with matplotlib (the `report` extra) through ecso_edge.report's
plotting helpers, as PNG and SVG:
- ecso_bench: per contender, the median latency with its min-max spread over the repetitions, the
  ratio against the llama-server contender of the same path, and the time to first token;
- conversation_bench: per turn, each contender's latency and prompt tokens evaluated;
- parallel_bench: per workload, throughput and p95 latency against the requests in flight, for
  ecso-edge parallel=1, parallel=N and llama-server -np N.
Run on a saved result to draw it again:  python bench/chart.py RESULTS.json [--out STEM]"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ecso_edge.report.plotting import color_of, matplotlib_missing, new_figure, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def server_peer(name: str) -> str:
    """The llama-server contender that does the same work as `name`."""
    if "unsafe" in name:
        return "llama_server_unsafe"
    return "llama_server_direct" if name.endswith("direct") else "llama_server_safe"


def _spread_bars(ax: "Axes", names: list[str], samples: dict[str, list[float]], xlabel: str) -> None:
    medians = [statistics.median(samples[n]) for n in names]
    low = [m - min(samples[n]) for m, n in zip(medians, names)]
    high = [max(samples[n]) - m for m, n in zip(medians, names)]
    ys = range(len(names))
    ax.barh(ys, medians, xerr=[low, high], capsize=3, color=[color_of(n) for n in names],
            error_kw={"elinewidth": 1, "ecolor": "black"})
    for y, m, h in zip(ys, medians, high):
        ax.annotate(f"{m:.3f}", (m + h, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.18)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def bench_figure(r: dict[str, Any], title: str) -> "Figure":
    names = list(r["samples_s"])
    fig = new_figure(15, 0.36 * len(names) + 1.8)
    fig.suptitle(title, fontsize=10)
    lat, ratio, ttft = fig.subplots(1, 3, sharey=True)
    _spread_bars(lat, names, r["samples_s"], "seconds per request: median, whiskers min-max")
    lat.set_yticks(range(len(names)), names, fontsize=8)
    lat.invert_yaxis()  # the first contender on top
    lat.set_title("latency", fontsize=9, loc="left")
    _spread_bars(ttft, names, r["ttft_samples_s"], "seconds to the first streamed text: median, min-max")
    ttft.set_title("time to first token", fontsize=9, loc="left")
    ratio.set_title("median latency / the llama-server contender of the same path", fontsize=9, loc="left")
    ratio.set_xlabel("ratio (below 1: faster than llama-server)")
    if "llama_server_safe" in r["samples_s"]:
        values = [r[n + "_s"] / r[server_peer(n) + "_s"] for n in names]
        ratio.barh(range(len(names)), values, color=[color_of(n) for n in names])
        for y, v in enumerate(values):
            ratio.annotate(f"{v:.3f}", (v, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ratio.axvline(1.0, color="black", linewidth=1)
        ratio.margins(x=0.18)
        ratio.grid(axis="x", alpha=0.3)
        ratio.set_axisbelow(True)
    else:
        ratio.text(0.5, 0.5, f"llama-server {r.get('llama_server', 'not measured')}", ha="center", va="center",
                   wrap=True, fontsize=8, transform=ratio.transAxes)
        ratio.set_xticks([])
    return fig


def conversation_figure(r: dict[str, Any], title: str) -> "Figure":
    fig = new_figure(10, 4.2)
    fig.suptitle(title, fontsize=10)
    seconds, prefilled = fig.subplots(1, 2, sharex=True)
    turns = list(range(1, r["turns"] + 1))
    for name, per_turn in r["per_turn"].items():
        style = {"color": color_of(name), "marker": "o", "label": name}
        seconds.plot(turns, [t["seconds"] for t in per_turn], **style)
        prefilled.plot(turns, [t["prefilled"] for t in per_turn], **style)
    seconds.set_ylabel("seconds (median over the repetitions)")
    seconds.set_title("latency per turn", fontsize=9, loc="left")
    prefilled.set_ylabel("prompt tokens evaluated")
    prefilled.set_title("prompt tokens evaluated per turn", fontsize=9, loc="left")
    for ax in (seconds, prefilled):
        _line_axes(ax, "turn", turns)
    return fig


def _line_axes(ax: "Axes", xlabel: str, xticks: list[int]) -> None:
    """The look every line chart here shares: labelled x ticks, y from 0, a light grid, a legend."""
    ax.set_xlabel(xlabel)
    ax.set_xticks(xticks)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def parallel_figure(r: dict[str, Any], title: str) -> "Figure":
    workloads = sorted({k.split("@")[0] for k in r["runs"]})
    fig = new_figure(11, 3.8 * len(workloads))
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(len(workloads), 2, squeeze=False)
    for row, workload in zip(axes, workloads):
        levels = sorted(int(k.split("@")[1]) for k in r["runs"] if k.startswith(workload + "@"))
        lines: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for c in levels:
            for name, m in r["runs"][f"{workload}@{c}"].items():
                kind = "ecso_parallel" if name.startswith("ecso_p") and name != "ecso_p1" else name.rstrip("0123456789")
                lines.setdefault(kind, []).append((c, m))
        for kind, points in lines.items():
            label = {"ecso_p": "ecso-edge parallel=1", "ecso_parallel": "ecso-edge parallel=N",
                     "llama_server_np": "llama-server -np N"}.get(kind, kind)
            style = {"color": color_of(kind), "marker": "o", "label": label}
            row[0].plot([c for c, _ in points], [m["throughput_rps"] for _, m in points], **style)
            row[1].plot([c for c, _ in points], [m["p95_s"] for _, m in points], **style)
        row[0].set_title(f"{workload}: throughput", fontsize=9, loc="left")
        row[0].set_ylabel("requests / s")
        row[1].set_title(f"{workload}: p95 latency", fontsize=9, loc="left")
        row[1].set_ylabel("seconds")
        for ax in row:
            _line_axes(ax, "concurrent requests (N)", levels)
    return fig


def draw(r: dict[str, Any], title: str, stem: Path) -> Optional[dict[str, Path]]:
    """Writes the figure of either benchmark's results as stem.png and stem.svg; None (with a note
    on stdout saying how to get it) without matplotlib."""
    missing = matplotlib_missing()
    if missing:
        print(f"no chart: {missing}")
        return None
    if "runs" in r and "head" in r:
        fig = parallel_figure(r, title)
    else:
        fig = conversation_figure(r, title) if "per_turn" in r else bench_figure(r, title)
    return save(fig, stem)


def title_of(r: dict[str, Any]) -> str:
    if "runs" in r and "head" in r:
        return (f"parallel: {Path(r['files']['model']).name} + {Path(r['files']['mmproj']).name}, {r['threads']} threads, "
                f"OMP_WAIT_POLICY {r['omp_wait_policy']}, {r['requests']} requests, {r['date']}")
    if "per_turn" in r:
        return (f"conversation: {r['model']['text']}, {r['threads']} threads, OMP_WAIT_POLICY {r['omp_wait_policy']}, "
                f"{r['turns']} turns x {r['reps']} reps, {r['date']}")
    c = r["config"]
    return (f"{Path(c['text_model']).name}, {c['threads']} threads, OMP_WAIT_POLICY {c['omp_wait_policy']}, "
            f"{c['repetitions']} repetitions, {c['date'][:10]}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a JSON that ecso_bench.py, conversation_bench.py or parallel_bench.py wrote")
    p.add_argument("--out", type=Path, default=None, help="the figure's path without suffix (default: beside the JSON)")
    args = p.parse_args(argv)
    r = json.loads(args.results.read_text())
    paths = draw(r, title_of(r), args.out or args.results.with_suffix(""))
    if paths:
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0 if paths else 1


if __name__ == "__main__":
    sys.exit(main())
