"""Results folder -> CSV, markdown tables, PNG plots and one self-contained HTML page.

Reads every result JSON written by the runner (`<model>/<dataset>__<task>.json`) under a folder.
Tables are models × datasets for each task's headline metrics, with a `mean` column (the mean
over the datasets that model has) and a `coverage` column beside it: datasets run / datasets the
catalog lists for the task (a mean over 3 of 12 datasets is not a mean over the benchmark). Plots: a grouped bar chart per task (95 % CIs as error bars)
and a radar chart across tasks (one polygon per model; axes are tasks, or task·dataset pairs when
there are fewer than three tasks). The HTML embeds the plots as base64 PNGs, so it is one file.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

HEADLINE = {
    "zero-shot": ("accuracy", "balanced_accuracy", "auroc"),
    "linear-probe": ("accuracy", "balanced_accuracy", "auroc"),
    "retrieval": ("i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"),
    "vqa": ("accuracy", "closed_accuracy", "open_accuracy"),
    "mil-classification": ("accuracy", "auroc"),
    "survival": ("c_index",),
}


def collect_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every result record under `folder` (recursively; hidden folders such as the feature cache skipped)."""
    folder = Path(folder)
    records = []
    for path in sorted(folder.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "task" in data and "dataset" in data:
            data.setdefault("model", path.parent.name)
            records.append(data)
    return records


def coverage(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, task) -> (datasets run, datasets listed): listed = every dataset the catalogs of the
    runs list for the task (records without catalog information count their own dataset)."""
    run: dict[tuple[str, str], set] = {}
    listed: dict[tuple[str, str], set] = {}
    for r in records:
        key = (r["model"], r["task"])
        run.setdefault(key, set()).add(r["dataset"])
        names = (r.get("catalog") or {}).get("listed") or [r["dataset"]]
        listed.setdefault(key, set()).update(names)
    return {k: (len(run[k]), len(listed[k] | run[k])) for k in run}


def long_table(records: list[dict[str, Any]]):
    """pandas DataFrame: one row per (model, dataset, task, metric) with value, ci_low, ci_high, and the
    (model, task)'s coverage: datasets_run of datasets_listed."""
    import pandas as pd

    cover = coverage(records)
    rows = []
    for r in records:
        run, listed = cover[(r["model"], r["task"])]
        for metric, value in r["metrics"].items():
            lo, hi = (r.get("ci") or {}).get(metric, [math.nan, math.nan])
            rows.append({"model": r["model"], "dataset": r["dataset"], "task": r["task"], "metric": metric,
                         "value": math.nan if value is None else float(value), "ci_low": lo, "ci_high": hi,
                         "seed": r.get("seed"), "datasets_run": run, "datasets_listed": listed})
    return pd.DataFrame(rows, columns=["model", "dataset", "task", "metric", "value", "ci_low", "ci_high", "seed",
                                       "datasets_run", "datasets_listed"])


def headline_metrics(df, task: str) -> list[str]:
    present = list(dict.fromkeys(df[df.task == task].metric))
    chosen = [m for m in HEADLINE.get(task, ()) if m in present]
    return chosen or present[:2]


def pivot(df, task: str, metric: str):
    """models × datasets table of one metric, with a `mean` column over each model's datasets."""
    sub = df[(df.task == task) & (df.metric == metric)]
    table = sub.pivot_table(index="model", columns="dataset", values="value", aggfunc="mean")
    table["mean"] = table.mean(axis=1, skipna=True)
    return table


def with_coverage(table, df, task: str):
    """The pivot table with a `coverage` column ("run/listed" datasets) after `mean`."""
    sub = df[df.task == task].drop_duplicates("model").set_index("model")
    out = table.astype(object)
    out["coverage"] = [f"{int(sub.loc[m, 'datasets_run'])}/{int(sub.loc[m, 'datasets_listed'])}" for m in out.index]
    return out


def _cell(v, digits: int) -> str:
    if isinstance(v, str):
        return v
    return "–" if (v is None or (isinstance(v, float) and math.isnan(v))) else f"{v:.{digits}f}"


def _markdown(table, digits: int = 3) -> str:
    cols = list(table.columns)
    lines = ["| model | " + " | ".join(str(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for model, row in table.iterrows():
        lines.append(f"| {model} | " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)


def markdown_report(df) -> str:
    parts = ["# mmkd evaluation results", "", "`coverage` = datasets run / datasets the catalog lists for the task.", ""]
    for task in sorted(set(df.task), key=lambda t: list(HEADLINE).index(t) if t in HEADLINE else 99):
        for metric in headline_metrics(df, task):
            parts += [f"## {task} — {metric}", "", _markdown(with_coverage(pivot(df, task, metric), df, task)), ""]
    return "\n".join(parts)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def bar_plot(df, task: str, metric: str, path: Path) -> Path:
    """Grouped bars: datasets (+ mean) on x, one bar per model, CI error bars where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = pivot(df, task, metric)
    sub = df[(df.task == task) & (df.metric == metric)].set_index(["model", "dataset"])
    models, datasets = list(table.index), list(table.columns)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(datasets) * max(1, len(models)) * 0.6 + 2), 3.6))
    x = np.arange(len(datasets))
    for i, model in enumerate(models):
        values = table.loc[model].to_numpy(dtype=float)
        err = np.zeros((2, len(datasets)))
        for j, d in enumerate(datasets):
            if (model, d) in sub.index:
                row = sub.loc[(model, d)]
                row = row.iloc[0] if hasattr(row, "iloc") and row.ndim > 1 else row
                if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
                    err[:, j] = [max(0.0, values[j] - row.ci_low), max(0.0, row.ci_high - values[j])]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, np.nan_to_num(values), width, yerr=err, capsize=2, label=model)
    ax.set_xticks(x, datasets, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{task}: {metric}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def radar_plot(df, path: Path) -> Path | None:
    """One polygon per model over tasks (mean of the task's first headline metric over datasets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    axes: list[tuple[str, str, str | None]] = []  # (label, task, dataset or None)
    tasks = sorted(set(df.task))
    if len(tasks) >= 3:
        axes = [(t, t, None) for t in tasks]
    else:
        for t in tasks:
            axes += [(f"{t}\n{d}", t, d) for d in sorted(set(df[df.task == t].dataset))]
    if len(axes) < 3:
        return None
    models = sorted(set(df.model))
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), subplot_kw={"polar": True})
    for model in models:
        values = []
        for _, task, dataset in axes:
            metric = headline_metrics(df, task)[0]
            sel = df[(df.model == model) & (df.task == task) & (df.metric == metric)]
            if dataset is not None:
                sel = sel[sel.dataset == dataset]
            values.append(float(sel.value.mean()) if len(sel) else 0.0)
        ax.plot(angles + angles[:1], values + values[:1], label=model)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles, [a[0] for a in axes], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("across tasks (headline metric)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.05, 1.05))
    return _save(fig, path)


def _html_table(table, digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for model, row in table.iterrows():
        cells = "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row)
        body.append(f"<tr><th>{html.escape(str(model))}</th>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def html_report(df, records: list[dict[str, Any]], images: list[Path]) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f4f4f4}"
             "img{max-width:100%;margin:1em 0} pre{background:#f8f8f8;padding:8px;overflow-x:auto;font-size:12px}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmkd evaluation</title><style>{style}</style>"
             "</head><body><h1>mmkd evaluation results</h1>"]
    for task in sorted(set(df.task), key=lambda t: list(HEADLINE).index(t) if t in HEADLINE else 99):
        parts.append(f"<h2>{html.escape(task)}</h2>")
        for metric in headline_metrics(df, task):
            parts.append(f"<h3>{html.escape(metric)}</h3>{_html_table(with_coverage(pivot(df, task, metric), df, task))}")
    parts.append("<h2>Plots</h2>")
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(img.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(img.stem)}</figcaption></figure>")
    parts.append("<h2>Models</h2>")
    seen = {}
    for r in records:
        seen.setdefault(r["model"], {"provenance": r.get("model_provenance"), "fingerprint": r.get("model_fingerprint")})
    parts.append(f"<pre>{html.escape(json.dumps(seen, indent=2, default=str))}</pre>")
    parts.append("<h2>Runs</h2><table><tr><th>model</th><th>dataset</th><th>task</th><th>seed</th><th>bootstrap</th>"
                 "<th>split sizes</th></tr>")
    for r in records:
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["model"], r["dataset"], r["task"], r.get("seed"), r.get("num_bootstrap"),
            json.dumps(r.get("split_sizes")))) + "</tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write results.csv, results.md, plots/*.png and report.html; returns their paths."""
    from mmkd.errors import UsageError
    from mmkd.utils.io import atomic_write_text

    records = collect_results(results_dir)
    if not records:
        raise UsageError(f"DIR: no result files (*.json with metrics) under {str(results_dir)!r}; run `mmkd eval "
                         f"--out {results_dir}` first")
    out = Path(out_dir) if out_dir else Path(results_dir) / "report"
    df = long_table(records)
    csv_path, md_path, html_path = out / "results.csv", out / "results.md", out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, df.to_csv(index=False))
    atomic_write_text(md_path, markdown_report(df) + "\n")
    images = []
    for task in sorted(set(df.task)):
        metric = headline_metrics(df, task)[0]
        safe = metric.replace("@", "at")
        images.append(bar_plot(df, task, metric, out / "plots" / f"bar_{task}_{safe}.png"))
    radar = radar_plot(df, out / "plots" / "radar.png")
    if radar is not None:
        images.append(radar)
    atomic_write_text(html_path, html_report(df, records, images))
    return {"csv": csv_path, "markdown": md_path, "html": html_path, "plots": images,
            "models": sorted(set(df.model)), "num_results": len(records)}
