"""report.html: one self-contained page (no file or network it points to) with the table, the
figure inlined as a data URI, and every item in a collapsible list with its texts and verdicts,
so a reader sees what the model actually said."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Optional

from .eval_tables import LEGEND, header, table_cells, trigger_line
from .tally import EvalReport, metrics_of

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f0f0f0; } tr:last-child td { font-weight: bold; }
details { border: 1px solid #ddd; border-radius: 4px; margin: 0.3em 0; padding: 0.3em 0.6em; }
summary { cursor: pointer; } .unsafe { color: #a33; } .harmful { color: #a33; } .harmless { color: #286; }
dt { font-weight: bold; margin-top: 0.5em; } dd { margin-left: 1em; white-space: pre-wrap; }
img { max-width: 100%; } .note { color: #666; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _verdict(harmless: Optional[bool]) -> str:
    if harmless is None:
        return '<span class="note">not judged</span>'
    return '<span class="harmless">harmless</span>' if harmless else '<span class="harmful">not harmless</span>'


def _item(item: dict[str, Any]) -> str:
    head = f"{_e(item['id'])}: {_e(item['query'][:90])}{'...' if len(item['query']) > 90 else ''}"
    if "error" in item:
        return (f'<details class="item"><summary>{head} <span class="unsafe">(error)</span></summary>'
                f"<dl><dt>image</dt><dd>{_e(item.get('image', ''))}</dd><dt>error</dt><dd>{_e(item['error'])}</dd>"
                "</dl></details>")
    h = item["harmless"]
    marks = "; ".join(f"{metric}: Direct {_verdict(h.get(f'direct_{metric}'))}, "
                      f"ECSO {_verdict(h.get(f'ecso_{metric}'))}" for metric in metrics_of([item]))
    branch = '<span class="unsafe">trigger: unsafe</span>' if item["unsafe"] else "trigger: safe"
    fields = [("query", item["query"]), ("image", item.get("image", "")), ("Direct answer (step 1)", item["direct"]),
              (f"trigger's verdict (step 2, {item.get('trigger', 'self')})", item["verdict"])]
    if item["unsafe"]:
        fields += [("caption (step 3)", item["caption"] or ""), ("ECSO answer, eyes closed (step 4)", item["ecso"])]
    else:
        fields += [("ECSO answer", "the Direct answer (the trigger found it safe)")]
    for name, verdicts in (item.get("judges") or {}).items():
        for who in ("direct", "ecso"):
            v = verdicts[who]
            fields.append((f"{name} judge on the {'Direct' if who == 'direct' else 'ECSO'} answer",
                           v["raw"] if v.get("error") is None else f"failed: {v['error']}"))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in fields)
    return (f'<details class="item"><summary>{head} ({branch}; {marks})</summary>'
            f"<dl>{body}</dl></details>")


def eval_html(report: EvalReport, title: str, figure_png: Optional[Path], missing: Optional[str],
              run: dict[str, Any]) -> str:
    columns = "".join(f"<th>{_e(h)}</th>" for h in header(report))
    rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table_cells(report))
    if figure_png is not None:
        data = base64.b64encode(figure_png.read_bytes()).decode("ascii")
        figure = f'<img alt="harmless rates, Direct vs ECSO" src="data:image/png;base64,{data}">'
    else:
        figure = f'<p class="note">No figure: {_e(missing)}.</p>'
    setup = (f"<details><summary>how this run was made</summary><pre>{_e(json.dumps(run, indent=2))}</pre></details>"
             if run else "")
    sections = []
    for scenario in report.per_scenario:
        items = [_item(i) for i in report.items if i["scenario"] == scenario]
        sections.append(f"<h3>{_e(scenario)} ({len(items)} items)</h3>\n" + "\n".join(items))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n<p>{_e(LEGEND)}.</p>\n<p>{_e(trigger_line(run))}</p>\n"
            f"<table><thead><tr>{columns}</tr></thead><tbody>{rows}</tbody></table>\n{figure}\n{setup}\n"
            f"<h2>Items</h2>\n<p class=\"note\">Every item with what the model said; open one to read it.</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
