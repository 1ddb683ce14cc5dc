"""The headline table of evaluation results: one number per (model, task type), with its 95 % CI.

Each cell is the task's headline number (HEADLINE_METRIC; multi-label zero-shot sets in a column of
their own, `zero-shot multi-label`, by mean per-label AUROC) averaged over the task's datasets; the
`overall` column is the mean of the task columns; the best ranked value per column is marked.

The ± of a cell, from the per-dataset bootstrap CIs (half-width h = (high - low) / 2):
- a mean of two correlated numbers of one dataset (retrieval: image->text and text->image recall)
  or of the task columns of `overall` (tasks may share datasets): the mean of the half-widths,
  an upper bound whatever the correlation;
- a task's mean over its n datasets (independent test sets): sqrt(sum h_i^2) / n, the normal
  approximation of the CI of a mean of independent estimates.
Coverage: a cell's mean is over the datasets that model ran, of those listed for the task (the
datasets any model ran, and those the runs' catalogs list: `catalog.listed` in a result file); a
cell short of the column's list shows `run/listed`. A cell that misses a dataset another model ran
(for `overall`: a task, or a task cell so marked) is marked † and not ranked: its mean is over a
different set and does not compare.
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
OVERALL = "overall"
PARTIAL = "†"
# Multi-label zero-shot sets (ChestMNIST, CheXpert observations) have no balanced accuracy: they get their own
# column, scored by the mean per-label AUROC.
MULTILABEL_ZERO_SHOT = "zero-shot multi-label"
COLUMN_METRIC = {"zero-shot": HEADLINE_METRIC["zero-shot"], MULTILABEL_ZERO_SHOT: ("auroc",), **HEADLINE_METRIC}
TASK_ORDER = tuple(COLUMN_METRIC)


def headline_column(record: dict[str, Any]) -> str:
    """The headline column of a result: its task, with multi-label zero-shot sets apart."""
    if record["task"] == "zero-shot" and (record.get("details") or {}).get("multilabel"):
        return MULTILABEL_ZERO_SHOT
    return record["task"]


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
    wanted = COLUMN_METRIC.get(task)
    if wanted:
        return wanted
    return tuple(present[:1])


def headline_score(record: dict[str, Any]) -> tuple[float, float]:
    """(value, CI half-width) of one result's headline number; nan where missing or not finite."""
    names = headline_metrics_of(headline_column(record), list(record["metrics"]))
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
    """One headline number: `value` ± `half_width` (95 % CI; nan when unknown), the mean over
    `datasets_run` of the column's `datasets_listed` datasets (for `overall`: summed over the tasks).
    `ranked`: the cell compares with the column's other ranked cells (it covers every dataset that
    any model ran for the task; for `overall`, every task column ranked); only those can be `best`."""

    value: float
    half_width: float
    datasets_run: int
    datasets_listed: int
    ranked: bool
    best: bool = False


@dataclass
class Headline:
    """The headline table: `cells[model][column]`, columns = task types in order, then `overall`.
    `datasets[task]`: every dataset any model ran for the task (rows of the per-dataset detail);
    `listed[task]`: those and every dataset a run's catalog lists for the task (its `catalog.listed`)."""

    models: list[str]
    columns: list[str]
    metrics: dict[str, tuple[str, ...]]
    datasets: dict[str, list[str]]
    listed: dict[str, list[str]]
    scores: dict[tuple[str, str, str], tuple[float, float]]  # (model, task, dataset) -> (value, half)
    cells: dict[str, dict[str, Cell]]


def _mean(values: list[float], halves: list[float], independent: bool) -> tuple[float, float]:
    value = sum(values) / len(values)
    if any(not math.isfinite(h) for h in halves):
        return value, math.nan
    if independent:
        return value, math.sqrt(sum(h * h for h in halves)) / len(halves)
    return value, sum(halves) / len(halves)


def headline_table(records: list[dict[str, Any]]) -> Headline:
    """Task means of the headline metric per model, `overall` = mean of the task means (see module doc)."""
    repeats: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    metrics: dict[str, tuple[str, ...]] = {}
    listed: dict[str, set[str]] = {}
    for r in records:
        names = (r.get("catalog") or {}).get("listed") or []
        listed.setdefault(r["task"], set()).update(str(n) for n in names)
        value, half = headline_score(r)
        column = headline_column(r)
        if math.isfinite(value):
            repeats.setdefault((r["model"], column, r["dataset"]), []).append((value, half))
            metrics.setdefault(column, headline_metrics_of(column, list(r["metrics"])))
    # a catalog lists its zero-shot sets together: the multi-label ones seen in results count in their own column
    multilabel = {r["dataset"] for r in records if headline_column(r) == MULTILABEL_ZERO_SHOT}
    if multilabel:
        zero_shot = listed.get("zero-shot", set())
        listed[MULTILABEL_ZERO_SHOT] = zero_shot & multilabel
        listed["zero-shot"] = zero_shot - multilabel
    # the same (model, task, dataset) found twice (e.g. in two subfolders): the mean of both
    scores = {key: (sum(v for v, _ in got) / len(got), sum(h for _, h in got) / len(got))
              for key, got in repeats.items()}
    models = sorted({m for m, _, _ in scores})
    tasks = sorted({t for _, t, _ in scores}, key=task_sort_key)
    datasets = {t: sorted({d for _, tt, d in scores if tt == t}) for t in tasks}
    every = {t: sorted(set(datasets[t]) | listed.get(t, set())) for t in tasks}
    cells: dict[str, dict[str, Cell]] = {m: {} for m in models}
    for m in models:
        for t in tasks:
            mine = [scores[(m, t, d)] for d in datasets[t] if (m, t, d) in scores]
            if mine:
                value, half = _mean([v for v, _ in mine], [h for _, h in mine], independent=True)
                cells[m][t] = Cell(value, half, len(mine), len(every[t]), ranked=len(mine) == len(datasets[t]))
        present = [cells[m][t] for t in tasks if t in cells[m]]
        value, half = _mean([c.value for c in present], [c.half_width for c in present], independent=False)
        cells[m][OVERALL] = Cell(value, half, sum(c.datasets_run for c in present),
                                 sum(len(every[t]) for t in tasks),
                                 ranked=len(present) == len(tasks) and all(c.ranked for c in present))
    columns = [*tasks, OVERALL]
    for col in columns:
        mark_best([cells[m].get(col) for m in models])
    return Headline(models, columns, metrics, datasets, every, scores, cells)


def mark_best(row: list[Cell | None], digits: int = 3) -> None:
    """Mark the ranked cells with the highest value as shown (ties all marked); none when only one competes."""
    ranked = [c for c in row if c is not None and c.ranked]
    if len([c for c in row if c is not None]) < 2 or not ranked:
        return
    top = max(round(c.value, digits) for c in ranked)
    for c in ranked:
        c.best = round(c.value, digits) == top


def coverage_note(cell: Cell) -> str:
    """`13/14` when the cell covers fewer datasets than its column lists, else empty."""
    return f"{cell.datasets_run}/{cell.datasets_listed}" if cell.datasets_run < cell.datasets_listed else ""


def format_cell(cell: Cell | None, digits: int = 3) -> str:
    """`0.812 ± 0.021`, `0.812` without a CI, `–` without a value; then the coverage when partial,
    and † when the cell is not ranked."""
    if cell is None:
        return "–"
    text = f"{cell.value:.{digits}f}"
    if math.isfinite(cell.half_width):
        text += f" ± {cell.half_width:.{digits}f}"
    if coverage_note(cell):
        text += f" ({coverage_note(cell)})"
    return text + ("" if cell.ranked else f" {PARTIAL}")


def column_note(head: Headline, col: str) -> str:
    """`3 datasets` (or `3 of 12 datasets run`) under a task column, `6 task types` under overall."""
    if col == OVERALL:
        n = len(head.columns) - 1
        return f"{n} task type{'s' if n != 1 else ''}"
    run, total = len(head.datasets[col]), len(head.listed[col])
    if run < total:
        return f"{run} of {total} datasets run"
    return f"{total} dataset{'s' if total != 1 else ''}"


def headline_rows(head: Headline) -> list[dict[str, Any]]:
    """The headline table as flat rows (headline.csv)."""
    rows = []
    for m in head.models:
        for col in head.columns:
            cell = head.cells[m].get(col)
            if cell is not None:
                rows.append({"model": m, "column": col, "value": cell.value, "ci_half_width": cell.half_width,
                             "datasets_run": cell.datasets_run, "datasets_listed": cell.datasets_listed,
                             "ranked": cell.ranked, "best": cell.best})
    return rows


def dataset_cell(head: Headline, model: str, task: str, dataset: str) -> Cell | None:
    if (model, task, dataset) not in head.scores:
        return None
    value, half = head.scores[(model, task, dataset)]
    return Cell(value, half, 1, 1, ranked=True)


def metric_table(df, task: str):
    """(dataset, metric) × models: every metric of one task, for the detail section."""
    sub = df[df.task == task]
    return sub.pivot_table(index=["dataset", "metric"], columns="model", values="value", aggfunc="mean")


def headline_legend(head: Headline, markdown: bool = False) -> str:
    metrics = "; ".join(f"{t}: {metric_label(head.metrics[t])}" for t in head.columns[:-1])
    best = "**bold**" if markdown else "bold"
    return (f"Each task column is the mean over its datasets of the task's headline metric ({metrics}); "
            f"`{OVERALL}` is the mean of the task columns. ± is the half-width of a 95 % bootstrap CI (a mean's "
            f"CI combines its datasets' CIs). run/listed: a mean over fewer datasets than the task lists. {best}: "
            f"the best value of the column; {PARTIAL}: the model misses a dataset or task type that another "
            f"model has, so its mean does not compare and is not ranked.")
