"""The demo's results table: one row per model, per-task means over datasets and their overall mean.

Headline number per (model, dataset, task): see `mmkd.demo.steps.TASK_METRIC` (balanced accuracy for
zero-shot and linear probe, mean recall@5 of both directions for retrieval, accuracy for VQA,
AUROC for MIL classification, c-index for survival). A task's column is the mean over its
datasets; `overall` is the mean of the six task columns, so every task weighs the same.
With several student seeds, a student row is the mean over seeds and `<column>_sd` its
standard deviation; `per_seed` keeps each seed's row.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mmkd.demo.steps import TASKS, summarise

SHORT = {"zero-shot": "zero-shot", "linear-probe": "lin. probe", "retrieval": "retrieval", "vqa": "VQA",
         "mil-classification": "MIL", "survival": "survival"}
COLUMNS = (*TASKS, "overall")


def results(runner, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows in table order (teachers, stage 1, control, stage 2 variants), seeds merged per model."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, m in plan["models"].items():
        groups.setdefault(m.get("group", name), []).append((name, m))
    rows = []
    kind_order = {"teacher": 0, "student": 1, "control": 2, "stage2": 3}
    for group, members in sorted(groups.items(), key=lambda g: kind_order[g[1][0][1]["kind"]]):
        per_seed = []
        for name, _ in members:
            scores = (runner.steps[f"eval-{name}"].result or {}).get("scores", {})
            per_seed.append({"model": name, **summarise(scores), "scores": scores})
        rows.append(merge_seeds(group, members[0][1], per_seed))
    return rows


def merge_seeds(group: str, meta: dict[str, Any], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": group, "label": meta["label"], "kind": meta["kind"], "num_seeds": len(per_seed)}
    for col in COLUMNS:
        values = [r[col] for r in per_seed if col in r and math.isfinite(r[col])]
        if values:
            row[col] = statistics.fmean(values)
            if len(values) > 1:
                row[f"{col}_sd"] = statistics.stdev(values)
    if len(per_seed) > 1:
        row["per_seed"] = per_seed
    else:
        row["scores"] = per_seed[0].get("scores", {})
    return row


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    sd = row.get(f"{col}_sd")
    return f"{v:.3f}" if sd is None else f"{v:.3f} ± {sd:.3f}"


def format_table(rows: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> str:
    """A markdown table (it also reads well in a terminal)."""
    lines = ["| model | " + " | ".join(SHORT[t] for t in TASKS) + " | overall |", "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        seeds = f" [{r['num_seeds']} seeds]" if r.get("num_seeds", 1) > 1 else ""
        lines.append(f"| {r['label']}{seeds} | " + " | ".join(_cell(r, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> list[str]:
    """The two claims the demo checks, stated with the measured numbers (true or not)."""
    teachers = [r for r in rows if r["kind"] == "teacher"]
    control = next((r for r in rows if r["kind"] == "control"), None)
    out = []
    for r in (r for r in rows if r["kind"] == "stage2"):
        best = max(teachers, key=lambda t: t["overall"]) if teachers else None
        if best is not None:
            ok = r["overall"] > best["overall"]
            out.append(f"{'yes' if ok else 'NO '}  {r['label']} overall {r['overall']:.3f} "
                       f"{'>' if ok else '<='} best teacher ({best['model']}) {best['overall']:.3f}")
        if control is not None:
            ok = r["overall"] > control["overall"]
            diff = r["overall"] - control["overall"]
            per_task = ", ".join(f"{SHORT[t]} {r[t] - control[t]:+.3f}" for t in TASKS if t in r and t in control)
            wins = ""
            if r.get("per_seed") and control.get("per_seed"):
                gains = [a["overall"] - b["overall"] for a, b in zip(r["per_seed"], control["per_seed"])]
                wins = f"; better on {sum(g > 0 for g in gains)} of {len(gains)} seeds"
            out.append(f"{'yes' if ok else 'NO '}  {r['label']} vs control: overall {diff:+.3f}{wins} ({per_task})")
    return out
