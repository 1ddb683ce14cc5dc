"""The report page: one self-contained HTML file (plots embedded as base64 PNG, no script, no fetch).

Order, as a reader needs it: the headline table (models × overall and task types), one plot per
task side by side at natural size, the per-dataset headline numbers, then folded sections with
every metric, the models' provenance and the runs. Wide tables scroll inside their own box, so the
page itself never scrolls sideways at a normal window width.
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
from pathlib import Path
from typing import Any

from mmkd.evaluation.report_table import (
    OVERALL, PARTIAL, Cell, Headline, column_note, coverage_note, dataset_cell, headline_legend, mark_best,
    metric_label, metric_table, task_sort_key,
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;margin:0 auto;
  padding:20px 28px 48px;max-width:1180px;line-height:1.4}
h1{font-size:1.6em;margin:0 0 .2em} h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:1px solid #d0d7de}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.summary,.legend{color:#57606a;font-size:.9em;max-width:75em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:right;white-space:nowrap}
th{background:#f6f8fa} tbody th,thead th:first-child{text-align:left}
thead th{white-space:normal;vertical-align:bottom}
thead th small{display:block;font-weight:normal;color:#57606a}
td .ci,td .cover{color:#57606a;font-size:.85em}
td.best{font-weight:700;background:#dafbe1} td.partial{color:#6e7781}
#headline{font-size:1em} #headline td{padding:5px 12px} #headline thead th{min-width:6.5em;max-width:10em}
#headline td .ci{display:block}
#headline tbody th{white-space:normal;overflow-wrap:anywhere;min-width:9em;max-width:17em}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:18px 24px;align-items:start}
.plots figure{margin:0} .plots img{display:block;max-width:100%;height:auto}
.plots figcaption{font-size:.85em;color:#57606a}
details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
"""

def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _cell_html(cell: Cell | None) -> str:
    if cell is None:
        return "<td>–</td>"
    classes = " ".join(c for c in ("best" if cell.best else "", "" if cell.ranked else "partial") if c)
    value = f"{cell.value:.3f}"
    cover = coverage_note(cell)
    if cover:
        value += f" <span class='cover' title='datasets run / datasets listed'>{cover}</span>"
    mark = "" if cell.ranked else f" <span title='misses what other models have: not ranked'>{PARTIAL}</span>"
    ci = f" <span class='ci'>± {cell.half_width:.3f}</span>" if math.isfinite(cell.half_width) else ""
    attr = f" class='{classes}'" if classes else ""
    return f"<td{attr}>{value}{mark}{ci}</td>"


def headline_html(head: Headline) -> str:
    """`overall` first, next to the model names: in view even when a narrow window scrolls the table;
    long model names wrap (demo names have no break opportunity) so every column fits a 1,180-px page."""
    columns = [OVERALL] + [c for c in head.columns if c != OVERALL]
    cols = []
    for col in columns:
        what = "mean of the task columns" if col == OVERALL else metric_label(head.metrics[col])
        cols.append(f"<th scope='col'>{html.escape(col)}<small>{html.escape(what)}</small>"
                    f"<small>{html.escape(column_note(head, col))}</small></th>")
    rows = []
    for m in head.models:
        cells = "".join(_cell_html(head.cells[m].get(c)) for c in columns)
        rows.append(f"<tr><th scope='row'>{html.escape(m)}</th>{cells}</tr>")
    return (f"<div class='scroll'><table id='headline'><thead><tr><th scope='col'>model</th>{''.join(cols)}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


def _dataset_table(head: Headline, task: str) -> str:
    header = "".join(f"<th scope='col'>{html.escape(m)}</th>" for m in head.models)
    rows = []
    for d in head.datasets[task]:
        row = [dataset_cell(head, m, task, d) for m in head.models]
        mark_best(row)
        cells = "".join(_cell_html(c) for c in row)
        rows.append(f"<tr><th scope='row'>{html.escape(d)}</th>{cells}</tr>")
    return (f"<div class='scroll'><table class='per-dataset' data-task='{html.escape(task)}'><thead><tr>"
            f"<th scope='col'>dataset</th>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _metric_table(df, task: str) -> str:
    table = metric_table(df, task)
    header = "".join(f"<th scope='col'>{html.escape(str(m))}</th>" for m in table.columns)
    rows = []
    for (dataset, metric), values in zip(table.index, table.to_numpy(dtype=float)):
        cells = "".join("<td>–</td>" if not math.isfinite(v) else f"<td>{v:.3f}</td>" for v in values)
        rows.append(f"<tr><th scope='row'>{html.escape(str(dataset))}</th><th scope='row'>{html.escape(str(metric))}"
                    f"</th>{cells}</tr>")
    return (f"<div class='scroll'><table><thead><tr><th>dataset</th><th>metric</th>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _summary(head: Headline, records: list[dict[str, Any]]) -> str:
    boots = sorted({int(r["num_bootstrap"]) for r in records if isinstance(r.get("num_bootstrap"), int)})
    datasets = {d for ds in head.datasets.values() for d in ds}
    parts = [f"{len(head.models)} model(s)", f"{len(head.columns) - 1} task type(s)", f"{len(datasets)} dataset(s)",
             f"{len(records)} result(s)"]
    if boots:
        parts.append("95 % CIs from " + " / ".join(str(b) for b in boots) + " bootstrap resamples")
    return " · ".join(parts)


def html_report(df, head: Headline, records: list[dict[str, Any]], plots: dict[str, Path]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>mmkd evaluation</title><style>{STYLE}</style></head><body>",
             "<h1>mmkd evaluation results</h1>",
             f"<p class='summary'>{html.escape(_summary(head, records))}</p>",
             "<h2 id='headline-title'>Headline</h2>", headline_html(head),
             f"<p class='legend'>{html.escape(headline_legend(head))}</p>",
             "<h2>Per task</h2><div class='plots' id='plots'>"]
    for task, path in plots.items():
        data = path.read_bytes()
        width, height = _png_size(data)
        caption = f"{task}: {metric_label(head.metrics[task])} per dataset (whiskers: 95 % CI); top row: the mean"
        parts.append(f"<figure class='task-plot' data-task='{html.escape(task)}'><img alt='{html.escape(task)}: "
                     f"{html.escape(caption)}' width='{width}' height='{height}' "
                     f"src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</div><h2 id='per-dataset'>Per dataset</h2>")
    for task in head.columns[:-1]:
        parts.append(f"<h3>{html.escape(task)} — {html.escape(metric_label(head.metrics[task]))}</h3>")
        parts.append(_dataset_table(head, task))
    parts.append("<h2>Details</h2>")
    for task in sorted(set(df.task), key=task_sort_key):
        parts.append(f"<details><summary>{html.escape(task)}: every metric</summary>{_metric_table(df, task)}"
                     f"</details>")
    seen: dict[str, Any] = {}
    for r in records:
        seen.setdefault(r["model"], {"provenance": r.get("model_provenance"), "fingerprint": r.get("model_fingerprint")})
    parts.append(f"<details><summary>models: provenance</summary><pre>"
                 f"{html.escape(json.dumps(seen, indent=2, default=str))}</pre></details>")
    parts.append("<details><summary>runs: seed, bootstrap resamples, split sizes</summary><div class='scroll'><table>"
                 "<thead><tr><th>model</th><th>dataset</th><th>task</th><th>seed</th><th>bootstrap</th>"
                 "<th>split sizes</th></tr></thead><tbody>")
    for r in records:
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["model"], r["dataset"], r["task"], r.get("seed"), r.get("num_bootstrap"),
            json.dumps(r.get("split_sizes")))) + "</tr>")
    parts.append("</tbody></table></div></details></body></html>")
    return "".join(parts)
