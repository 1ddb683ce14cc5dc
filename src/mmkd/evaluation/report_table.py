"""The headline table of evaluation results: one number per (model, task type), with its 95 % CI.

Each cell is the task's headline number (HEADLINE_METRIC) averaged over the task's datasets; the
`overall` column is the mean of the task columns; the best complete value per column is marked.

The ± of a cell, from the per-dataset bootstrap CIs (half-width h = (high - low) / 2):
- a mean of two correlated numbers of one dataset (retrieval: image->text and text->image recall)
  or of the task columns of `overall` (tasks may share datasets): the mean of the half-widths,
  an upper bound whatever the correlation;
- a task's mean over its n datasets (independent test sets): sqrt(sum h_i^2) / n, the normal
  approximation of the CI of a mean of independent estimates.
A cell over fewer datasets (or task types) than the column has is marked partial (†) and is not
eligible as the column's best: its mean is over a different set and does not compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The one number per (model, dataset, task) in the headline table and the plots; a tuple is
# averaged (retrieval: both directions). The demo's results table uses the same definition.
HEADLINE_METRIC: dict[str, tuple[str, ...]] = {
    "zero-shot": ("balanced_accuracy",),
    "linear-probe": ("balanced_accuracy",),
    "retrieval": ("i2t_recall@5", "t2i_recall@5"),
    "vqa": ("accuracy",),
    "mil-classification": ("auroc",),
    "survival": ("c_index",),
}
METRIC_LABEL = {
    "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy", "auroc": "AUROC", "c_index": "c-index",
    ("i2t_recall@5", "t2i_recall@5"): "recall@5, both directions",
}
TASK_ORDER = tuple(HEADLINE_METRIC)
OVERALL = "overall"
PARTIAL = "†"


def task_sort_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def metric_label(metrics: tuple[str, ...]) -> str:
    key: Any = metrics if len(metrics) > 1 else metrics[0]
    return METRIC_LABEL.get(key, " + ".join(metrics))


def as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def headline_metrics_of(task: str, present: list[str]) -> tuple[str, ...]:
    """The task's headline metrics; for a task mmkd does not know, its first metric."""
    wanted = HEADLINE_METRIC.get(task)
    if wanted:
        return wanted
    return tuple(present[:1])


def headline_score(record: dict[str, Any]) -> tuple[float, float]:
    """(value, CI half-width) of one result's headline number; nan where missing or not finite."""
    names = headline_metrics_of(record["task"], list(record["metrics"]))
    values, halves = [], []
    for name in names:
        value = as_float(record["metrics"].get(name))
        if not math.isfinite(value):
            return math.nan, math.nan
        values.append(value)
        lo, hi = ((record.get("ci") or {}).get(name) or [math.nan, math.nan])[:2]
        halves.append((as_float(hi) - as_float(lo)) / 2)
    if not values:
        return math.nan, math.nan
    half = sum(halves) / len(halves)
    return sum(values) / len(values), half if math.isfinite(half) else math.nan


@dataclass
class Cell:
    """One headline number: `value` ± `half_width` (95 % CI; nan when unknown) over `count` datasets
    (task columns) or task types (`overall`); `complete` when that is every one the column has."""

    value: float
    half_width: float
    count: int
    complete: bool
    best: bool = False


@dataclass
class Headline:
    """The headline table: `cells[model][column]`, columns = task types in order, then `overall`.
    `datasets[task]`: every dataset any model has for that task (the column's full set)."""

    models: list[str]
    columns: list[str]
    metrics: dict[str, tuple[str, ...]]
    datasets: dict[str, list[str]]
    scores: dict[tuple[str, str, str], tuple[float, float]]  # (model, task, dataset) -> (value, half)
    cells: dict[str, dict[str, Cell]]


def _mean_cell(values: list[float], halves: list[float], count: int, complete: bool, independent: bool) -> Cell:
    value = sum(values) / len(values)
    if any(not math.isfinite(h) for h in halves):
        half = math.nan
    elif independent:
        half = math.sqrt(sum(h * h for h in halves)) / len(halves)
    else:
        half = sum(halves) / len(halves)
    return Cell(value, half, count, complete)


def headline_table(records: list[dict[str, Any]]) -> Headline:
    """Task means of the headline metric per model, `overall` = mean of the task means (see module doc)."""
    repeats: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    metrics: dict[str, tuple[str, ...]] = {}
    for r in records:
        value, half = headline_score(r)
        if math.isfinite(value):
            repeats.setdefault((r["model"], r["task"], r["dataset"]), []).append((value, half))
            metrics.setdefault(r["task"], headline_metrics_of(r["task"], list(r["metrics"])))
    # the same (model, task, dataset) found twice (e.g. in two subfolders): the mean of both
    scores = {key: (sum(v for v, _ in got) / len(got), sum(h for _, h in got) / len(got))
              for key, got in repeats.items()}
    models = sorted({m for m, _, _ in scores})
    tasks = sorted({t for _, t, _ in scores}, key=task_sort_key)
    datasets = {t: sorted({d for _, tt, d in scores if tt == t}) for t in tasks}
    cells: dict[str, dict[str, Cell]] = {m: {} for m in models}
    for m in models:
        for t in tasks:
            mine = [scores[(m, t, d)] for d in datasets[t] if (m, t, d) in scores]
            if mine:
                cells[m][t] = _mean_cell([v for v, _ in mine], [h for _, h in mine], len(mine),
                                         len(mine) == len(datasets[t]), independent=True)
        present = [cells[m][t] for t in tasks if t in cells[m]]
        cells[m][OVERALL] = _mean_cell([c.value for c in present], [c.half_width for c in present], len(present),
                                       len(present) == len(tasks) and all(c.complete for c in present),
                                       independent=False)
    columns = [*tasks, OVERALL]
    for col in columns:
        eligible = [cells[m][col] for m in models if col in cells[m] and cells[m][col].complete]
        if len(models) > 1 and eligible:
            top = max(round(c.value, 3) for c in eligible)
            for c in eligible:
                c.best = round(c.value, 3) == top
    return Headline(models, columns, metrics, datasets, scores, cells)


def format_cell(cell: Cell | None, digits: int = 3) -> str:
    """`0.812 ± 0.021`, `0.812` without a CI, `–` without a value; partial cells end with †."""
    if cell is None:
        return "–"
    text = f"{cell.value:.{digits}f}"
    if math.isfinite(cell.half_width):
        text += f" ± {cell.half_width:.{digits}f}"
    return text + ("" if cell.complete else f" {PARTIAL}")


def column_note(head: Headline, col: str) -> str:
    """`3 datasets` under a task column, `6 task types` under overall."""
    if col == OVERALL:
        n = len(head.columns) - 1
        return f"{n} task type{'s' if n != 1 else ''}"
    n = len(head.datasets[col])
    return f"{n} dataset{'s' if n != 1 else ''}"


def headline_rows(head: Headline) -> list[dict[str, Any]]:
    """The headline table as flat rows (headline.csv)."""
    rows = []
    for m in head.models:
        for col in head.columns:
            cell = head.cells[m].get(col)
            if cell is not None:
                rows.append({"model": m, "column": col, "value": cell.value, "ci_half_width": cell.half_width,
                             "count": cell.count, "complete": cell.complete, "best": cell.best})
    return rows


def dataset_cell(head: Headline, model: str, task: str, dataset: str) -> Cell | None:
    if (model, task, dataset) not in head.scores:
        return None
    value, half = head.scores[(model, task, dataset)]
    return Cell(value, half, 1, True)


def metric_table(df, task: str):
    """(dataset, metric) × models: every metric of one task, for the detail section."""
    sub = df[df.task == task]
    return sub.pivot_table(index=["dataset", "metric"], columns="model", values="value", aggfunc="mean")


def headline_legend(head: Headline, markdown: bool = False) -> str:
    metrics = "; ".join(f"{t}: {metric_label(head.metrics[t])}" for t in head.columns[:-1])
    best = "**bold**" if markdown else "bold"
    return (f"Each task column is the mean over its datasets of the task's headline metric ({metrics}); "
            f"`{OVERALL}` is the mean of the task columns. ± is the half-width of a 95 % bootstrap CI (a mean's "
            f"CI combines its datasets' CIs). {best}: the best value of the column; {PARTIAL}: the model lacks "
            f"some of the column's datasets or task types, so its mean does not compare and is not ranked.")
