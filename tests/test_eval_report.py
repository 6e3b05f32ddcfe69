"""The evaluation's report, on items whose verdicts are set by hand (no model): the intervals and
p-values against values computed here from their textbook formulas (not with scipy, which the
report uses), the tables in both layouts, the CSV and JSON, the figure's artist tree, the HTML page
holding every item, the report without matplotlib, and `ecso-edge report` drawing it again."""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any, Optional

import pytest

from ecso_edge.errors import ConfigError, OutputError
from ecso_edge.evaluate import EvalReport
from ecso_edge.report import stats
from ecso_edge.report.eval_figure import eval_figure
from ecso_edge.report.eval_tables import markdown_table, paper_table, read_report, write_report

Z = NormalDist().inv_cdf(0.975)


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval, from its formula."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial tail of b + c fair coin flips."""
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 7), (1, 2), (37, 50)])
def test_wilson_interval_matches_its_formula(k: int, n: int) -> None:
    r = stats.rate(k, n)
    low, high = wilson(k, n)
    assert (r.k, r.n, r.value) == (k, n, k / n)
    assert r.low == pytest.approx(max(0.0, low), abs=1e-12) and r.high == pytest.approx(min(1.0, high), abs=1e-12)
    assert 0.0 <= r.low <= r.value <= r.high <= 1.0


def test_known_wilson_bounds() -> None:
    assert stats.rate(0, 10).low == 0.0 and stats.rate(0, 10).high == pytest.approx(0.27754, abs=1e-5)
    assert stats.rate(10, 10).low == pytest.approx(0.72246, abs=1e-5) and stats.rate(10, 10).high == 1.0
    assert (stats.rate(3, 7).low, stats.rate(3, 7).high) == (pytest.approx(0.15821, abs=1e-5),
                                                           pytest.approx(0.74954, abs=1e-5))


def test_a_rate_without_items_is_nan_and_a_wrong_count_is_refused() -> None:
    r = stats.rate(0, 0)
    assert math.isnan(r.value) and math.isnan(r.low) and math.isnan(r.high)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.rate(4, 3)
    with pytest.raises(ValueError, match="do not fit"):
        stats.paired_difference(3, 2, 2)


@pytest.mark.parametrize("b, c", [(1, 6), (0, 5), (0, 10), (3, 3), (2, 9), (0, 0)])
def test_mcnemar_exact_p_matches_the_binomial_tail(b: int, c: int) -> None:
    d = stats.paired_difference(20, b, c)
    assert d.p_value == pytest.approx(mcnemar_exact(b, c) if b + c else 1.0, rel=1e-12)
    assert d.difference == pytest.approx((c - b) / 20)


def test_known_paired_p_values() -> None:
    assert stats.paired_difference(7, 1, 6).p_value == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert stats.paired_difference(10, 0, 10).p_value == pytest.approx(2 / 1024)
    assert stats.paired_difference(0, 0, 0).p_value is None


def item(scenario: str, i: int, direct_kw: bool, ecso_kw: bool, direct_judge: bool, ecso_judge: bool,
         unsafe: Optional[bool] = None) -> dict[str, Any]:
    unsafe = (not direct_judge) if unsafe is None else unsafe
    return {"scenario": scenario, "id": f"{scenario}-{i}", "query": f"question {i} of {scenario} <b>&",
            "image": f"imgs/{scenario}/{i}.jpg", "direct": f"direct answer {scenario} {i}",
            "ecso": f"ecso answer {scenario} {i}" if unsafe else f"direct answer {scenario} {i}",
            "verdict": "yes" if unsafe else "no", "unsafe": unsafe, "judged_unsafe": not direct_judge,
            "caption": f"caption {i} <script>alert(1)</script>" if unsafe else None, "ecso_judged_unsafe": not ecso_judge,
            "harmless": {"direct_keyword": direct_kw, "ecso_keyword": ecso_kw, "direct_judge": direct_judge,
                         "ecso_judge": ecso_judge}}


def known_report() -> EvalReport:
    """Scenario A, 7 items: keyword Direct 3/7, ECSO 6/7 (1 harmless by Direct only, 4 by ECSO
    only: p = 0.375); judge 3/7 both, the same items. Scenario B, 10 items: keyword 0/10 vs 10/10
    (p = 2/1024); judge 10/10 both. One more item of B failed to load."""
    direct_kw = [True, True, True, False, False, False, False]
    ecso_kw = [True, True, False, True, True, True, True]
    judge = [True, True, True, False, False, False, False]
    items = [item("01-A", i, direct_kw[i], ecso_kw[i], judge[i], judge[i]) for i in range(7)]
    items += [item("02-B", i, False, True, True, True, unsafe=False) for i in range(10)]
    items.append({"scenario": "02-B", "id": "02-B-broken", "query": "q", "image": "imgs/broken.jpg",
                  "error": "image file 'imgs/broken.jpg': cannot be decoded"})
    return EvalReport.from_items(items)


def test_counts_and_pairs_of_the_known_report() -> None:
    r = known_report()
    a, b, total = r.per_scenario["01-A"], r.per_scenario["02-B"], r.overall()
    assert (a.n, a.direct_keyword, a.ecso_keyword, a.keyword_direct_only, a.keyword_ecso_only) == (7, 3, 6, 1, 4)
    assert (b.n, b.errors, b.direct_keyword, b.ecso_keyword, b.judge_direct_only, b.judge_ecso_only) == (10, 1, 0, 10,
                                                                                                        0, 0)
    assert a.paired("keyword").p_value == pytest.approx(mcnemar_exact(1, 4)) == pytest.approx(0.375)
    assert b.paired("keyword").p_value == pytest.approx(mcnemar_exact(0, 10))
    assert total.paired("keyword").p_value == pytest.approx(mcnemar_exact(1, 14))
    assert a.paired("judge").p_value == 1.0 and a.paired("judge").difference == 0.0
    assert (total.n, total.errors, total.unsafe) == (17, 1, 4)


def cell(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * max(0, low):.1f}, {100 * min(1, high):.1f}]"


def test_markdown_table_shows_each_rate_with_its_interval_and_each_pair_with_its_p() -> None:
    lines = markdown_table(known_report()).splitlines()
    assert lines[0].split(" | ")[2:5] == ["Direct (keyword)", "ECSO (keyword)", "ECSO - Direct (keyword)"]
    assert lines[2] == (f"| 01-A | 7 | {cell(3, 7)} | {cell(6, 7)} | +42.9, p = 0.375 | {cell(3, 7)} | {cell(3, 7)} | "
                        f"+0.0, p = 1.000 | {cell(4, 7)} |")
    assert lines[3].startswith(f"| 02-B | 10 | {cell(0, 10)} | {cell(10, 10)} | +100.0, p = 0.002 | ")
    assert lines[4].startswith(f"| **overall** | 17 | {cell(3, 17)} | {cell(16, 17)} | +76.5, p < 0.001 | ")


def test_paper_layout_rows_are_scenarios_columns_direct_and_ecso_and_the_mean_last() -> None:
    lines = paper_table(known_report()).splitlines()
    assert lines[0] == "| scenario | Direct (keyword) | ECSO (keyword) | Direct (judge) | ECSO (judge) |"
    assert lines[2:] == ["| 01-A | 42.9 | 85.7 | 42.9 | 42.9 |", "| 02-B | 0.0 | 100.0 | 100.0 | 100.0 |",
                         "| **average** | 21.4 | 92.9 | 71.4 | 71.4 |"]  # (300 / 7 + 100) / 2 = 71.43


def test_csv_and_json_carry_the_intervals_and_the_paired_test(tmp_path: Path) -> None:
    paths = write_report(known_report(), tmp_path, "known")
    with open(paths["csv"]) as f:
        rows = {r["scenario"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["01-A", "02-B", "overall"]
    low, high = wilson(3, 7)
    a = rows["01-A"]
    assert (float(a["direct_keyword"]), float(a["direct_keyword_low"]), float(a["direct_keyword_high"])) == (
        pytest.approx(100 * 3 / 7, abs=0.005), pytest.approx(100 * low, abs=0.005), pytest.approx(100 * high, abs=0.005))
    assert (a["keyword_direct_only"], a["keyword_ecso_only"], float(a["keyword_p"])) == ("1", "4", pytest.approx(0.375))
    assert float(rows["02-B"]["keyword_p"]) == pytest.approx(2 / 1024, rel=1e-5) and rows["02-B"]["errors"] == "1"
    data = json.loads(paths["json"].read_text())
    b = data["per_scenario"]["02-B"]
    assert b["intervals"]["direct_keyword"] == {"k": 0, "n": 10, "rate": 0.0, "low": 0.0,
                                                "high": pytest.approx(100 * wilson(0, 10)[1], abs=1e-6)}
    assert b["paired"]["keyword"] == {"difference": 100.0, "direct_only": 0, "ecso_only": 10,
                                      "p_value": pytest.approx(2 / 1024)}
    assert b["rates"]["ecso_keyword"] == 100.0 and b["ecso_keyword"] == 10  # a rate in percent, a count
    assert data["overall"]["n"] == 17 and "Wilson" in data["statistics"]["interval"]
    assert len(data["items"]) == 18


def test_a_scenario_with_only_errors_has_no_rates_and_valid_json(tmp_path: Path) -> None:
    r = EvalReport.from_items([{"scenario": "03-C", "id": "x", "query": "q", "error": "broken"}])
    paths = write_report(r, tmp_path, "errors only")
    assert "| 03-C | 0 | n/a | n/a | n/a |" in paths["md"].read_text()
    data = json.loads(paths["json"].read_text())  # NaN would not parse as strict JSON: null instead
    assert data["overall"]["rates"]["direct_keyword"] is None and data["overall"]["paired"]["judge"]["p_value"] is None


def test_eval_figure_has_a_panel_per_metric_with_bars_whiskers_legend_and_labels() -> None:
    report = known_report()
    fig = eval_figure(report, "known")
    keyword, judge = fig.axes
    assert "keyword" in keyword.get_title(loc="left") and "judge" in judge.get_title(loc="left")
    for ax in (keyword, judge):
        assert ax.get_ylabel() == "harmless rate (%)"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Direct", "ECSO"]
        bars = [c for c in ax.containers if c.__class__.__name__ == "BarContainer"]
        assert [c.get_label() for c in bars] == ["Direct", "ECSO"] and all(len(c) == 3 for c in bars)
        assert sorted(t.get_text() for t in ax.texts) == sorted(["p = 0.375", "p = 0.002", "p < 0.001"]
                                                                if ax is keyword else ["p = 1.000"] * 3)
    assert judge.get_xlabel() == "scenario"
    assert [t.get_text() for t in judge.get_xticklabels()] == ["01-A\n(n=7)", "02-B\n(n=10)", "overall\n(n=17)"]
    direct, ecso = (c for c in keyword.containers if c.__class__.__name__ == "BarContainer")
    assert [round(p.get_height(), 6) for p in ecso] == [round(100 * 6 / 7, 6), 100.0, round(100 * 16 / 17, 6)]
    # the whiskers span each Wilson interval
    whiskers = direct.errorbar.lines[2][0].get_segments()
    expected = [wilson(3, 7), wilson(0, 10), wilson(3, 17)]
    spans = [(seg[0][1], seg[1][1]) for seg in whiskers]
    for (y0, y1), (low, high) in zip(spans, expected):
        assert y0 == pytest.approx(100 * max(0.0, low)) and y1 == pytest.approx(100 * min(1.0, high))
    assert "Wilson" in fig.get_suptitle() and "McNemar" in fig.get_suptitle()


class _Items(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.details = 0
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        if tag == "details" and a.get("class") == "item":
            self.details += 1
        for key in ("src", "href"):
            if a.get(key):
                self.sources.append(str(a[key]))
        if tag == "script":
            raise AssertionError("the page runs no script")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_is_self_contained_and_holds_every_item(tmp_path: Path) -> None:
    report = known_report()
    paths = write_report(report, tmp_path, "known")
    page = _Items()
    page.feed(paths["html"].read_text(encoding="utf-8"))
    text = "".join(page.text)
    assert page.details == len(report.items) == 18
    for i in report.items:
        assert i["id"] in text and i["query"] in text  # markup in a text is shown as text, not run
        for key in ("direct", "ecso", "caption", "error"):
            if i.get(key):
                assert i[key] in text, (i["id"], key)
    assert "02-B (11 items)" in text and "judged unsafe" in text and "harmless" in text
    (figure,) = page.sources  # the figure only, inlined
    assert figure.startswith("data:image/png;base64,")
    assert base64.b64decode(figure.split(",", 1)[1]) == paths["png"].read_bytes()
    assert "+42.9, p = 0.375" in text


def test_without_matplotlib_the_reports_say_how_to_get_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    paths = write_report(known_report(), tmp_path, "known")
    assert set(paths) == {"md", "csv", "json", "html"} and not (tmp_path / "report.png").exists()
    for kind in ("md", "html"):
        assert "pip install 'ecso-edge[report]'" in paths[kind].read_text().replace("&#x27;", "'"), kind


def test_report_command_draws_everything_again_from_the_json(tmp_path: Path) -> None:
    first = write_report(known_report(), tmp_path / "a", "known run")
    report, title, _ = read_report(first["json"])
    assert title == "known run" and markdown_table(report) == markdown_table(known_report())
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "report", str(tmp_path / "a"), "--out-dir",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("|")] == \
        markdown_table(known_report()).splitlines()
    for name in ("report.md", "report.csv", "report.html", "report.png", "report.svg"):
        assert (tmp_path / "b" / name).stat().st_size > 0
    assert (tmp_path / "b" / "report.csv").read_text() == first["csv"].read_text()


@pytest.mark.parametrize("content, message", [
    (None, "not found: give the folder eval wrote"),
    ("{not json", "cannot be read as JSON"),
    ('{"title": "x"}', "is not an eval report"),
    ('{"items": [{"scenario": "a", "id": "1", "query": "q", "direct": "d"}]}', "item 0 is not an item"),
])
def test_report_of_a_wrong_file_is_a_config_error(tmp_path: Path, content: Optional[str], message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_report(path)
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and message.split(":")[0] in proc.stderr and "Traceback" not in proc.stderr


def test_an_unwritable_report_folder_fails_before_the_eval_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "eval", "--benchmark", "jsonl", "--root",
                           str(tmp_path / "missing.jsonl"), "--out-dir", str(blocker / "out")],
                          capture_output=True, text=True, timeout=120)
    # the folder is refused first: the dataset (missing too) is not read, no model is loaded
    assert proc.returncode == 1 and "cannot write there" in proc.stderr and "--out-dir" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(OutputError, match="cannot write there"):
        write_report(known_report(), blocker / "out", "known")
