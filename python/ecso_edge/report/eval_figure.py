"""The evaluation's figure: one panel per metric, grouped bars per scenario (and all items pooled)
for Direct vs ECSO, each with its 95 % Wilson interval as a whisker and McNemar's exact p above
the pair."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .eval_tables import fmt_p, rows_of
from .tally import EvalReport
from .plotting import COLORS, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANEL_TITLES = {"keyword": "keyword metric: the answer opens with a refusal phrase (GCG's list)",
                "guard": "guard metric: a guard model calls the answer harmless",
                "api": "api metric: a chat endpoint with MM-SafetyBench's prompts calls the answer safe"}
BAR = 0.38


def eval_figure(report: EvalReport, title: str) -> "Figure":
    groups = rows_of(report)
    fig = new_figure(max(6.5, 1.15 * len(groups) + 2.5), 3.4 * len(report.metrics) + 0.6)
    fig.suptitle(f"{title}\nharmless rate, Direct vs ECSO; whiskers: 95 % Wilson interval; p: McNemar's exact test",
                 fontsize=10)
    axes = fig.subplots(len(report.metrics), 1, sharex=True, squeeze=False)[:, 0]
    xs = list(range(len(groups)))
    for ax, metric in zip(axes, report.metrics):
        for offset, who, label in ((-BAR / 2, "direct", "Direct"), (BAR / 2, "ecso", "ECSO")):
            rates = [t.rate(f"{who}_{metric}") for _, t in groups]
            heights = [100 * r.value if r.n else 0.0 for r in rates]
            err = [[100 * (r.value - r.low) if r.n else 0.0 for r in rates],
                   [100 * (r.high - r.value) if r.n else 0.0 for r in rates]]
            ax.bar([x + offset for x in xs], heights, BAR, yerr=err, capsize=3, color=COLORS[who], label=label,
                   error_kw={"elinewidth": 1, "ecolor": "black"})
        for x, (_, t) in zip(xs, groups):
            d = t.paired(metric)
            ax.annotate("no items" if d.n == 0 else fmt_p(d.p_value), (x, 103), ha="center", fontsize=8)
        ax.set_title(PANEL_TITLES[metric], fontsize=9, loc="left")
        ax.set_ylabel("harmless rate (%)")
        ax.set_ylim(0, 112)
        ax.set_yticks([0, 20, 40, 60, 80, 100])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)  # beside the bars, never on them
    axes[-1].set_xticks(xs, [f"{name}\n(n={t.n})" for name, t in groups], fontsize=8)
    axes[-1].set_xlabel("scenario")
    return fig
