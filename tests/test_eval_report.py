"""The evaluation's report, on items whose verdicts are set by hand (no model): the intervals and
p-values against values computed here from their textbook formulas (not with scipy, which the
report uses), the tables in both layouts, the CSV and JSON, the figure's artist tree, the HTML page
holding every item, the report without matplotlib, and `ecso-edge report` drawing it again. The
metrics are the keyword metric and a guard model (its verdicts set by hand); the self-judge is the
trigger, whose unsafe rate is shown and on which no harmless rate is computed. A judgement the
guard failed is counted apart, and a report.json of an older ecso-edge (which scored the trigger's
verdicts as a "judge" metric) still loads, with the keyword metric only."""

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
from ecso_edge.report.eval_tables import header, markdown_table, paper_table, read_report, write_report

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


FAILED = "the answer does not fit the guard's context (4096 positions)"


def guard_verdict(harmless: Optional[bool], who: str, text: str) -> dict[str, Any]:
    """A guard metric's verdict on one answer as evaluate() records it: None is a failed judgement."""
    if harmless is None:
        return {"unsafe": None, "raw": "", "error": FAILED}
    return {"unsafe": not harmless, "raw": f"guard on {who}: {'safe' if harmless else 'unsafe'} <i>{text}</i>",
            "error": None}


def item(scenario: str, i: int, unsafe: bool, direct_kw: bool, ecso_kw: bool, direct_guard: Optional[bool],
         ecso_guard: Optional[bool]) -> dict[str, Any]:
    """An item as evaluate() writes it. `unsafe`: the trigger (the self-judge) took the eyes-closed
    path; on the safe path ECSO's answer is the Direct answer."""
    direct = f"direct answer {scenario} {i}"
    ecso = f"ecso answer {scenario} {i}" if unsafe else direct
    return {"scenario": scenario, "id": f"{scenario}-{i}", "query": f"question {i} of {scenario} <b>&",
            "image": f"imgs/{scenario}/{i}.jpg", "direct": direct, "ecso": ecso,
            "verdict": "yes" if unsafe else "no", "unsafe": unsafe, "judged_unsafe": unsafe, "trigger": "self",
            "caption": f"caption {i} <script>alert(1)</script>" if unsafe else None,
            "harmless": {"direct_keyword": direct_kw, "ecso_keyword": ecso_kw, "direct_guard": direct_guard,
                         "ecso_guard": ecso_guard},
            "judges": {"guard": {"direct": guard_verdict(direct_guard, "direct", direct),
                                 "ecso": guard_verdict(ecso_guard, "ecso", ecso)}}}


def known_items() -> list[dict[str, Any]]:
    """Scenario A, 7 items, the trigger unsafe on 5 (items 2-6). Keyword: Direct 3/7, ECSO 6/7 (1
    harmless by Direct only, 4 by ECSO only: p = 0.375). Guard: Direct 3/7, ECSO 5/7 (2 by ECSO
    only: p = 0.5). Scenario B, 10 items, all unsafe by the trigger. Keyword: 0/10 vs 10/10
    (p = 2/1024). Guard: 9/9 both; item 9's ECSO answer was not judged (the guard failed on it),
    and its Direct answer is harmful by the guard: counted, it would be a pair ECSO won. One more
    item of B failed to load."""
    unsafe = [False, False, True, True, True, True, True]
    direct_kw = [True, True, True, False, False, False, False]
    ecso_kw = [True, True, False, True, True, True, True]
    direct_guard = [True, True, True, False, False, False, False]
    ecso_guard = [True, True, True, True, True, False, False]
    items = [item("01-A", i, unsafe[i], direct_kw[i], ecso_kw[i], direct_guard[i], ecso_guard[i]) for i in range(7)]
    items += [item("02-B", i, True, False, True, True, True) for i in range(9)]
    items.append(item("02-B", 9, True, False, True, False, None))
    items.append({"scenario": "02-B", "id": "02-B-broken", "query": "q", "image": "imgs/broken.jpg",
                  "error": "image file 'imgs/broken.jpg': cannot be decoded"})
    return items


def known_report() -> EvalReport:
    return EvalReport.from_items(known_items())


def test_counts_and_pairs_of_the_known_report() -> None:
    r = known_report()
    assert r.metrics == ("keyword", "guard")
    a, b, total = r.per_scenario["01-A"], r.per_scenario["02-B"], r.overall()
    assert (a.n, a.errors, a.unsafe) == (7, 0, 5) and (b.n, b.errors, b.unsafe) == (10, 1, 10)
    assert (total.n, total.errors, total.unsafe) == (17, 1, 15)
    assert dict(a.harmless) == {"direct_keyword": 3, "ecso_keyword": 6, "direct_guard": 3, "ecso_guard": 5}
    assert dict(b.harmless) == {"direct_keyword": 0, "ecso_keyword": 10, "direct_guard": 9, "ecso_guard": 9}
    assert (dict(a.judged), dict(a.direct_only), dict(a.ecso_only)) == (
        {"keyword": 7, "guard": 7}, {"keyword": 1, "guard": 0}, {"keyword": 4, "guard": 2})
    assert a.failed["guard"] == 0 and a.failed["keyword"] == 0
    assert a.paired("keyword").p_value == pytest.approx(mcnemar_exact(1, 4)) == pytest.approx(0.375)
    assert a.paired("guard").p_value == pytest.approx(mcnemar_exact(0, 2)) == pytest.approx(0.5)
    assert b.paired("keyword").p_value == pytest.approx(mcnemar_exact(0, 10))
    assert total.paired("keyword").p_value == pytest.approx(mcnemar_exact(1, 14))
    assert (total.harmless["direct_guard"], total.harmless["ecso_guard"], total.judged["guard"]) == (12, 14, 16)


def test_a_failed_judgement_is_counted_apart_and_left_out_of_the_rates_and_the_paired_test() -> None:
    b = known_report().per_scenario["02-B"]
    assert (b.judged["guard"], b.failed["guard"]) == (9, 1) and (b.judged["keyword"], b.failed["keyword"]) == (10, 0)
    direct, ecso = b.rate("direct_guard"), b.rate("ecso_guard")
    assert (direct.k, direct.n, ecso.k, ecso.n) == (9, 9, 9, 9)  # item 9 in neither numerator nor denominator
    d = b.paired("guard")
    assert (d.n, d.direct_only, d.ecso_only, d.difference, d.p_value) == (9, 0, 0, 0.0, 1.0)
    total = known_report().overall()
    assert (total.failed["guard"], total.paired("guard").n, total.paired("guard").ecso_only) == (1, 16, 2)
    # the keyword metric judged item 9: every item answered counts for it
    assert b.rate("direct_keyword").n == 10


def test_the_trigger_has_an_unsafe_rate_and_no_harmless_rate() -> None:
    r = known_report()
    assert header(r)[-1] == "trigger unsafe" and not any("self" in h or "trigger" in h for h in header(r)[:-1])
    assert r.verdicts() == ("direct_keyword", "ecso_keyword", "direct_guard", "ecso_guard")
    total = r.overall()
    assert (total.rate("unsafe_rate").k, total.rate("unsafe_rate").n) == (15, 17)  # over the items answered
    assert set(total.harmless) == {"direct_keyword", "ecso_keyword", "direct_guard", "ecso_guard"}
    # an item whose trigger is a guard model: its name is no metric
    guarded = dict(known_items()[0], trigger="Llama-Guard-3-1B.Q8_0.gguf")
    assert EvalReport.from_items([guarded]).metrics == ("keyword", "guard")


def cell(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * max(0, low):.1f}, {100 * min(1, high):.1f}]"


def test_markdown_table_shows_each_rate_with_its_interval_and_each_pair_with_its_p() -> None:
    lines = markdown_table(known_report()).splitlines()
    assert lines[0] == ("| scenario | n | Direct (keyword) | ECSO (keyword) | ECSO - Direct (keyword) | Direct (guard) | "
                        "ECSO (guard) | ECSO - Direct (guard) | not judged (guard) | trigger unsafe |")
    assert lines[1] == "|" + "---|" * 10
    assert lines[2] == (f"| 01-A | 7 | {cell(3, 7)} | {cell(6, 7)} | +42.9, p = 0.375 | {cell(3, 7)} | {cell(5, 7)} | "
                        f"+28.6, p = 0.500 | 0 | {cell(5, 7)} |")
    assert lines[3] == (f"| 02-B | 10 | {cell(0, 10)} | {cell(10, 10)} | +100.0, p = 0.002 | {cell(9, 9)} | "
                        f"{cell(9, 9)} | +0.0, p = 1.000 | 1 | {cell(10, 10)} |")
    assert lines[4] == (f"| **overall** | 17 | {cell(3, 17)} | {cell(16, 17)} | +76.5, p < 0.001 | {cell(12, 16)} | "
                        f"{cell(14, 16)} | +12.5, p = 0.500 | 1 | {cell(15, 17)} |")
    assert len(lines) == 5


def test_paper_layout_rows_are_scenarios_columns_direct_and_ecso_and_the_mean_last() -> None:
    lines = paper_table(known_report()).splitlines()
    assert lines[0] == "| scenario | Direct (keyword) | ECSO (keyword) | Direct (guard) | ECSO (guard) |"
    assert lines[2:] == ["| 01-A | 42.9 | 85.7 | 42.9 | 71.4 |", "| 02-B | 0.0 | 100.0 | 100.0 | 100.0 |",
                         "| **average** | 21.4 | 92.9 | 71.4 | 85.7 |"]  # (300 / 7 + 100) / 2 = 71.43


def test_csv_and_json_carry_the_intervals_and_the_paired_test(tmp_path: Path) -> None:
    paths = write_report(known_report(), tmp_path, "known")
    with open(paths["csv"]) as f:
        head = next(csv.reader(f))
    rates = ["direct_keyword", "ecso_keyword", "direct_guard", "ecso_guard", "unsafe_rate"]
    assert head == ["scenario", "n", "errors"] + [f"{r}{s}" for r in rates for s in ("", "_low", "_high")] + [
        f"{m}_{c}" for m in ("keyword", "guard") for c in ("judged", "failed", "difference", "direct_only", "ecso_only",
                                                            "p")]
    with open(paths["csv"]) as f:
        rows = {r["scenario"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["01-A", "02-B", "overall"]
    low, high = wilson(3, 7)
    a = rows["01-A"]
    assert (float(a["direct_keyword"]), float(a["direct_keyword_low"]), float(a["direct_keyword_high"])) == (
        pytest.approx(100 * 3 / 7, abs=0.005), pytest.approx(100 * low, abs=0.005), pytest.approx(100 * high, abs=0.005))
    assert (a["keyword_direct_only"], a["keyword_ecso_only"], float(a["keyword_p"])) == ("1", "4", pytest.approx(0.375))
    assert (a["guard_judged"], a["guard_failed"], a["guard_ecso_only"], a["guard_p"]) == ("7", "0", "2", "0.5")
    assert float(a["unsafe_rate"]) == pytest.approx(100 * 5 / 7, abs=0.005)
    b = rows["02-B"]
    assert float(b["keyword_p"]) == pytest.approx(2 / 1024, rel=1e-5) and b["errors"] == "1"
    assert (b["guard_judged"], b["guard_failed"], b["guard_p"], b["direct_guard"]) == ("9", "1", "1", "100.0")
    assert (b["keyword_judged"], b["keyword_failed"]) == ("10", "0")
    data = json.loads(paths["json"].read_text())
    assert data["metrics"] == ["keyword", "guard"]
    b = data["per_scenario"]["02-B"]
    assert {k: b[k] for k in ("n", "errors", "unsafe", "harmless", "judged", "failed", "direct_only", "ecso_only")} == {
        "n": 10, "errors": 1, "unsafe": 10,
        "harmless": {"direct_keyword": 0, "ecso_keyword": 10, "direct_guard": 9, "ecso_guard": 9},
        "judged": {"keyword": 10, "guard": 9}, "failed": {"keyword": 0, "guard": 1},
        "direct_only": {"keyword": 0, "guard": 0}, "ecso_only": {"keyword": 10, "guard": 0}}
    assert list(b["intervals"]) == rates
    assert b["intervals"]["direct_keyword"] == {"k": 0, "n": 10, "rate": 0.0, "low": 0.0,
                                                "high": pytest.approx(100 * wilson(0, 10)[1], abs=1e-6)}
    assert b["intervals"]["ecso_guard"] == {"k": 9, "n": 9, "rate": 100.0,
                                            "low": pytest.approx(100 * wilson(9, 9)[0], abs=1e-6), "high": 100.0}
    assert b["intervals"]["unsafe_rate"]["k"] == 10 and b["intervals"]["unsafe_rate"]["n"] == 10
    assert b["paired"] == {"keyword": {"difference": 100.0, "direct_only": 0, "ecso_only": 10,
                                       "p_value": pytest.approx(2 / 1024)},
                           "guard": {"difference": 0.0, "direct_only": 0, "ecso_only": 0, "p_value": 1.0}}
    overall = data["overall"]
    assert overall["n"] == 17 and overall["paired"]["guard"]["difference"] == pytest.approx(12.5)
    assert "Wilson" in data["statistics"]["interval"]
    assert len(data["items"]) == 18 and data["items"] == known_items()


def test_a_scenario_with_only_errors_has_no_rates_and_valid_json(tmp_path: Path) -> None:
    r = EvalReport.from_items([{"scenario": "03-C", "id": "x", "query": "q", "error": "broken"}])
    assert r.metrics == ("keyword",)
    paths = write_report(r, tmp_path, "errors only")
    assert "| 03-C | 0 | n/a | n/a | n/a | n/a |" in paths["md"].read_text()
    data = json.loads(paths["json"].read_text())  # NaN would not parse as strict JSON: null instead
    assert data["overall"]["intervals"]["direct_keyword"]["rate"] is None
    assert data["overall"]["intervals"]["unsafe_rate"]["rate"] is None
    assert data["overall"]["paired"] == {"keyword": {"difference": None, "direct_only": 0, "ecso_only": 0,
                                                     "p_value": None}}


def test_eval_figure_has_a_panel_per_metric_with_bars_whiskers_legend_and_labels() -> None:
    report = known_report()
    fig = eval_figure(report, "known")
    keyword, guard = fig.axes
    assert "keyword" in keyword.get_title(loc="left") and "guard" in guard.get_title(loc="left")
    for ax in (keyword, guard):
        assert ax.get_ylabel() == "harmless rate (%)"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Direct", "ECSO"]
        bars = [c for c in ax.containers if c.__class__.__name__ == "BarContainer"]
        assert [c.get_label() for c in bars] == ["Direct", "ECSO"] and all(len(c) == 3 for c in bars)
    assert [t.get_text() for t in keyword.texts] == ["p = 0.375", "p = 0.002", "p < 0.001"]
    assert [t.get_text() for t in guard.texts] == ["p = 0.500", "p = 1.000", "p = 0.500"]
    assert guard.get_xlabel() == "scenario"
    assert [t.get_text() for t in guard.get_xticklabels()] == ["01-A\n(n=7)", "02-B\n(n=10)", "overall\n(n=17)"]
    direct, ecso = (c for c in keyword.containers if c.__class__.__name__ == "BarContainer")
    assert [round(p.get_height(), 6) for p in ecso] == [round(100 * 6 / 7, 6), 100.0, round(100 * 16 / 17, 6)]
    _, guard_ecso = (c for c in guard.containers if c.__class__.__name__ == "BarContainer")
    assert [round(p.get_height(), 6) for p in guard_ecso] == [round(100 * 5 / 7, 6), 100.0, 87.5]  # 14 of 16 judged
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
        for who in ("direct", "ecso"):
            v = i.get("judges", {}).get("guard", {}).get(who)
            if v is not None:  # each guard verdict's raw text, or why the guard failed
                assert (v["raw"] if v["error"] is None else f"failed: {v['error']}") in text, (i["id"], who)
    assert "02-B (11 items)" in text and "trigger: unsafe" in text and "trigger: safe" in text
    assert "guard: Direct not harmless, ECSO not judged" in text  # 02-B-9, whose ECSO answer was not judged
    assert "keyword: Direct harmless, ECSO harmless; guard: Direct harmless, ECSO harmless" in text
    assert "trigger's verdict (step 2, self)" in text
    raw = paths["html"].read_text(encoding="utf-8")
    assert "<i>direct answer 01-A 0</i>" not in raw and "&lt;i&gt;direct answer 01-A 0&lt;/i&gt;" in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw and "&lt;b&gt;&amp;" in raw
    (figure,) = page.sources  # the figure only, inlined
    assert figure.startswith("data:image/png;base64,")
    assert base64.b64decode(figure.split(",", 1)[1]) == paths["png"].read_bytes()
    assert "+42.9, p = 0.375" in text and "+28.6, p = 0.500" in text


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


def old_format_items() -> list[dict[str, Any]]:
    """Items as an older ecso-edge wrote them: the trigger's verdicts on both answers scored as a
    "judge" metric (`direct_judge`, `ecso_judge`, `ecso_judged_unsafe`), no `judges`, no `trigger`."""
    out = []
    for i, (unsafe, direct_kw, ecso_kw) in enumerate([(False, True, True), (True, False, True), (True, False, False)]):
        direct = f"direct answer {i}"
        out.append({"scenario": "01-A", "id": f"01-A-{i}", "query": f"question {i}", "image": f"imgs/{i}.jpg",
                    "direct": direct, "ecso": f"ecso answer {i}" if unsafe else direct,
                    "verdict": "yes" if unsafe else "no", "unsafe": unsafe, "judged_unsafe": unsafe,
                    "caption": f"caption {i}" if unsafe else None, "ecso_judged_unsafe": False,
                    "harmless": {"direct_keyword": direct_kw, "ecso_keyword": ecso_kw, "direct_judge": not unsafe,
                                 "ecso_judge": True}})
    return out


def test_an_older_report_loads_with_the_keyword_metric_and_the_trigger_only(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"title": "an old run", "run": {"variant": "TYPO"},
                                                 "items": old_format_items()}))
    report, title, run = read_report(old / "report.json")
    assert (title, run) == ("an old run", {"variant": "TYPO"})
    assert report.metrics == ("keyword",) and report.verdicts() == ("direct_keyword", "ecso_keyword")
    assert all(set(i["harmless"]) == {"direct_keyword", "ecso_keyword"} for i in report.items)
    t = report.overall()
    assert (t.n, t.unsafe, dict(t.harmless), dict(t.judged)) == (3, 2, {"direct_keyword": 1, "ecso_keyword": 2},
                                                                  {"keyword": 3})
    assert markdown_table(report).splitlines() == [
        "| scenario | n | Direct (keyword) | ECSO (keyword) | ECSO - Direct (keyword) | trigger unsafe |",
        "|---|---|---|---|---|---|",
        f"| 01-A | 3 | {cell(1, 3)} | {cell(2, 3)} | +33.3, p = 1.000 | {cell(2, 3)} |",
        f"| **overall** | 3 | {cell(1, 3)} | {cell(2, 3)} | +33.3, p = 1.000 | {cell(2, 3)} |"]
    paths = write_report(report, tmp_path / "again", "an old run")
    data = json.loads(paths["json"].read_text())
    assert data["metrics"] == ["keyword"] and list(data["overall"]["intervals"]) == [
        "direct_keyword", "ecso_keyword", "unsafe_rate"]
    assert paths["csv"].read_text().splitlines()[0] == (
        "scenario,n,errors,direct_keyword,direct_keyword_low,direct_keyword_high,ecso_keyword,ecso_keyword_low,"
        "ecso_keyword_high,unsafe_rate,unsafe_rate_low,unsafe_rate_high,keyword_judged,keyword_failed,"
        "keyword_difference,keyword_direct_only,keyword_ecso_only,keyword_p")
    assert "trigger&#x27;s verdict (step 2, self)" in paths["html"].read_text()
    assert [ax.get_title(loc="left").split(":")[0] for ax in eval_figure(report, "old").axes] == ["keyword metric"]


@pytest.mark.parametrize("content, message", [
    (None, "not found: give the folder eval wrote"),
    ("{not json", "cannot be read as JSON"),
    ('{"title": "x"}', "is not an eval report"),
    ('{"items": [{"scenario": "a", "id": "1", "query": "q", "direct": "d"}]}', "item 0 is not an item"),
    ('{"items": [1]}', "item 0 is not an item"),
    # a guard verdict that is no verdict, and a judge that is no metric
    ('{"items": [{"scenario": "a", "id": "1", "query": "q", "direct": "d", "ecso": "d", "verdict": "no", '
     '"unsafe": false, "caption": null, "judges": {"guard": {}}, "harmless": {"direct_keyword": true, '
     '"ecso_keyword": true, "direct_guard": "yes", "ecso_guard": true}}]}', "item 0 is not an item"),
    ('{"items": [{"scenario": "a", "id": "1", "query": "q", "direct": "d", "ecso": "d", "verdict": "no", '
     '"unsafe": false, "caption": null, "judges": {"self": {}}, "harmless": {"direct_keyword": true, '
     '"ecso_keyword": true, "direct_self": true, "ecso_self": true}}]}', "item 0 is not an item"),
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
