"""Results folder -> CSV, markdown, one compact plot per task, and one self-contained HTML page.

Reads every result JSON written by the runner (`<model>/<dataset>__<task>.json`) under a folder.
What a reader sees first is the headline table (report_table: models × task types plus overall,
95 % CIs as ±, the best per column marked); then one plot per task (report_plots: small multiples
of the headline metric per dataset); then the per-dataset detail and every metric (report_html).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mmkd.evaluation.report_table import (
    Headline, as_float, column_note, dataset_cell, format_cell, headline_legend, headline_rows,
    headline_table, metric_label, metric_table, task_sort_key,
)

def collect_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every result record under `folder` (recursively; hidden folders such as the feature cache skipped)."""
    folder = Path(folder)
    records = []
    for path in sorted(folder.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "task" in data and "dataset" in data:
            data.setdefault("model", path.parent.name)
            if data.get("protocol", "mmkd") != "mmkd":  # another scoring protocol: never in the same column
                data["model"] = f"{data['model']} [{data['protocol']} protocol]"
            records.append(data)
    label_models(records)
    return records


def model_fingerprint_of(record: dict[str, Any]) -> str:
    """The hash part of a result's `model_fingerprint` (NAME-HASH, see runner.FeatureCache.model_key)."""
    return str(record.get("model_fingerprint") or "").rsplit("-", 1)[-1]


def label_models(records: list[dict[str, Any]]) -> None:
    """A model's identity is its fingerprint, not the name its results are filed under: results of different
    models that share a name (runs/s1 and other/s1) are labelled `NAME [HASH]` so no row mixes them."""
    prints: dict[str, set[str]] = {}
    for r in records:
        prints.setdefault(str(r["model"]), set()).add(model_fingerprint_of(r))
    for r in records:
        if len(prints[str(r["model"])]) > 1:
            r["model"] = f"{r['model']} [{model_fingerprint_of(r)[:8] or 'no fingerprint'}]"


def long_table(records: list[dict[str, Any]]):
    """pandas DataFrame: one row per (model, dataset, task, metric) with value, ci_low, ci_high."""
    import pandas as pd

    rows = []
    for r in records:
        for metric, value in r["metrics"].items():
            lo, hi = ((r.get("ci") or {}).get(metric) or [math.nan, math.nan])[:2]
            rows.append({"model": r["model"], "dataset": r["dataset"], "task": r["task"], "metric": metric,
                         "value": as_float(value), "ci_low": as_float(lo), "ci_high": as_float(hi),
                         "seed": r.get("seed")})
    return pd.DataFrame(rows, columns=["model", "dataset", "task", "metric", "value", "ci_low", "ci_high", "seed"])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(df, head: Headline) -> str:
    """The same three parts as the HTML page: headline, per-dataset headline metric, every metric."""
    parts = ["# mmkd evaluation results", "", "## Headline", ""]
    header = ["model"] + [f"{c} ({column_note(head, c)})" for c in head.columns]
    rows = []
    for m in head.models:
        cells = [head.cells[m].get(c) for c in head.columns]
        rows.append([m] + [f"**{format_cell(c)}**" if c is not None and c.best else format_cell(c) for c in cells])
    parts += [_md_table(header, rows), "", headline_legend(head, markdown=True), ""]
    parts += ["## Per dataset", ""]
    for task in head.columns[:-1]:
        parts += [f"### {task} — {metric_label(head.metrics[task])}", ""]
        rows = [[d] + [format_cell(dataset_cell(head, m, task, d)) for m in head.models] for d in head.datasets[task]]
        parts += [_md_table(["dataset", *head.models], rows), ""]
    parts += ["## Every metric", ""]
    for task in sorted(set(df.task), key=task_sort_key):
        table = metric_table(df, task)
        rows = [[d, metric] + ["–" if not math.isfinite(v) else f"{v:.3f}" for v in row]
                for (d, metric), row in zip(table.index, table.to_numpy(dtype=float))]
        parts += [f"### {task}", "", _md_table(["dataset", "metric", *map(str, table.columns)], rows), ""]
    return "\n".join(parts)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write results.csv, headline.csv, results.md, plots/*.png and report.html; returns their paths."""
    import csv
    import io

    from mmkd.errors import UsageError
    from mmkd.evaluation.report_html import html_report
    from mmkd.evaluation.report_plots import task_plot
    from mmkd.utils.io import atomic_write_text

    records = collect_results(results_dir)
    if not records:
        raise UsageError(f"DIR: no result files (*.json with metrics) under {str(results_dir)!r}; run `mmkd eval "
                         f"--out {results_dir}` first")
    out = Path(out_dir) if out_dir else Path(results_dir) / "report"
    df = long_table(records)
    head = headline_table(records)
    paths = {"csv": out / "results.csv", "headline_csv": out / "headline.csv", "markdown": out / "results.md",
             "html": out / "report.html"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["model", "column", "value", "ci_half_width", "datasets_run", "datasets_listed",
                                  "ranked", "best"])
    writer.writeheader()
    writer.writerows(headline_rows(head))
    atomic_write_text(paths["headline_csv"], buf.getvalue())
    atomic_write_text(paths["markdown"], markdown_report(df, head) + "\n")
    plots = {}
    for task in head.columns[:-1]:
        plots[task] = task_plot(head, task, out / "plots" / f"{task.replace(' ', '-')}.png")
    atomic_write_text(paths["html"], html_report(df, head, records, plots))
    return {**paths, "plots": list(plots.values()), "models": head.models, "num_results": len(records)}
