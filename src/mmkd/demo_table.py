"""The demo's results table: one row per model, per-task means over datasets and their overall mean.

Headline number per (model, dataset, task): see `demo_steps.TASK_METRIC` (balanced accuracy for
zero-shot and linear probe, mean recall@5 of both directions for retrieval, accuracy for VQA,
AUROC for MIL classification, c-index for survival). A task's column is the mean over its
datasets; `overall` is the mean of the six task columns, so every task weighs the same.
"""

from __future__ import annotations

import math
from typing import Any

from mmkd.demo_steps import TASKS, summarise

SHORT = {"zero-shot": "zero-shot", "linear-probe": "lin. probe", "retrieval": "retrieval", "vqa": "VQA",
         "mil-classification": "MIL", "survival": "survival"}


def results(runner, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows in table order (teachers, stage 1, control, stage 2 variants) from the evaluation steps."""
    rows = []
    for name, m in plan["models"].items():
        scores = (runner.steps[f"eval-{name}"].result or {}).get("scores", {})
        rows.append({"model": name, "label": m["label"], "kind": m["kind"], **summarise(scores), "scores": scores})
    return rows


def _cell(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(rows: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> str:
    """A markdown table (it also reads well in a terminal)."""
    head = "| model | " + " | ".join(SHORT[t] for t in TASKS) + " | overall |"
    lines = [head, "|---|" + "---:|" * (len(TASKS) + 1)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(_cell(r.get(t)) for t in TASKS) + f" | {_cell(r['overall'])} |")
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
            out.append(f"{'yes' if ok else 'NO '}  {r['label']} vs control: overall {diff:+.3f} ({per_task})")
    return out
