"""One compact plot per task for the report: the headline metric per dataset, one marker per model.

A horizontal dot plot (datasets on y, the metric on x, CI whiskers), the task's mean over datasets
on top. The x axis spans the data (whiskers included) in steps of 0.1, at least 0.3 wide: markers
have no baseline to keep, and a fixed 0–1 axis would squeeze every model into a few pixels. It stays narrow however many datasets a task has (rows grow, the width
does not), so a page shows the tasks side by side at their natural size, text readable unscaled.
"""

from __future__ import annotations

import math
from pathlib import Path

from mmkd.evaluation.report_table import OVERALL, Headline, metric_label

WIDTH_IN = 5.6
DPI = 100  # 560 px wide: two plots side by side on a 1280 px window, at their natural size
MARKERS = "osD^vP*Xph"
LABEL_CHARS = 26  # longer dataset names lose their middle (the per-dataset table has them whole)


def _rows(head: Headline, task: str) -> list[tuple[str, list[tuple[float, float] | None]]]:
    """[(label, [(value, half) or None per model])], the task mean first."""
    means = [(c.value, c.half_width) if (c := head.cells[m].get(task)) else None for m in head.models]
    rows = [("mean", means)]
    for d in head.datasets[task]:
        rows.append((d, [head.scores.get((m, task, d)) for m in head.models]))
    return rows


def _short(label: str) -> str:
    if len(label) <= LABEL_CHARS:
        return label
    keep = LABEL_CHARS - 1
    return label[: keep - keep // 3] + "…" + label[len(label) - keep // 3:]


def x_range(rows: list[tuple[str, list[tuple[float, float] | None]]]) -> tuple[float, float]:
    """Axis limits covering every value and whisker, on a 0.1 grid inside [0, 1], at least 0.3 wide."""
    ends = [(v - h, v + h) if math.isfinite(h) else (v, v) for _, points in rows for p in points if p for v, h in [p]]
    lo = max(0.0, math.floor(min(e[0] for e in ends) * 10 - 0.2) / 10)
    hi = min(1.0, math.ceil(max(e[1] for e in ends) * 10 + 0.2) / 10)
    while hi - lo < 0.3 - 1e-9:
        lo, hi = max(0.0, lo - 0.1), min(1.0, hi + 0.1)
    return lo, hi


def task_plot(head: Headline, task: str, path: Path) -> Path:
    """Write the task's plot to `path` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert task != OVERALL and task in head.datasets, task
    rows = _rows(head, task)
    num_models = len(head.models)
    # a legend entry is a marker plus the name at 9 pt (about 5.5 px a character): as many columns as fit
    entry_px = 34 + 5.5 * max(len(m) for m in head.models)
    ncol = max(1, min(num_models, int((WIDTH_IN * DPI - 20) // entry_px)))
    row_in = 0.12 + 0.06 * num_models
    legend_in = 0.22 * math.ceil(num_models / ncol)
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.95 + legend_in + row_in * len(rows)), dpi=DPI, layout="constrained")
    offsets = [(i - (num_models - 1) / 2) * min(0.7 / max(1, num_models), 0.22) for i in range(num_models)]
    for i, model in enumerate(head.models):
        ys, xs, errs = [], [], []
        for y, (_, per_model) in enumerate(rows):
            point = per_model[i]
            if point is None:
                continue
            ys.append(y + offsets[i])
            xs.append(point[0])
            errs.append(point[1] if math.isfinite(point[1]) else 0.0)
        ax.errorbar(xs, ys, xerr=errs, fmt=MARKERS[i % len(MARKERS)], color=f"C{i % 10}",
                    markersize=5, elinewidth=1.2, capsize=2, label=model)
    ax.set_yticks(range(len(rows)), [_short(label) for label, _ in rows], fontsize=9)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row (the mean) on top
    ax.axhline(0.5, color="0.6", linewidth=0.8)
    ax.set_xlim(*x_range(rows))
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    ax.set_xlabel(metric_label(head.metrics[task]))
    ax.set_title(task, loc="left", fontweight="bold")
    fig.legend(loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # the constrained layout fits labels and legend inside the fixed width
    plt.close(fig)
    return path
