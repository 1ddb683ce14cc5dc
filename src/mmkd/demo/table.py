"""The demo's results table: one row per model, per-task means over datasets and their overall mean.

Headline number per (model, dataset, task): see `mmkd.demo.steps.TASK_METRIC` (balanced accuracy for
zero-shot and linear probe, mean recall@5 of both directions for retrieval, accuracy for VQA,
AUROC for MIL classification, c-index for survival). A task's column is the mean over its
datasets. `overall` is the mean of the columns of the tasks that *separate* trained from untrained
models (`separating_tasks`): a task an untrained encoder already solves says nothing about what
training or distillation taught, so it is shown beside `overall`, never averaged into it.
The test run takes the task set of `overall` frozen on validation (the selection file), and every
row also carries `all-tasks`, the mean of all six columns, shown beside `overall`.
With several runs (student seeds, corpus seeds), a row is the mean over its runs and `<column>_sd`
their standard deviation; `per_seed` keeps each run's row (with its `corpus_seed`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mmkd.demo.steps import TASKS

SHORT = {"zero-shot": "zero-shot", "linear-probe": "lin. probe", "retrieval": "retrieval", "vqa": "VQA",
         "mil-classification": "MIL", "survival": "survival", "overall": "overall", "all-tasks": "all tasks"}
ALL_TASKS = "all-tasks"
COLUMNS = (*TASKS, "overall", ALL_TASKS)
KIND_ORDER = {"teacher": 0, "untrained": 1, "student": 2, "control": 3, "stage2": 4}
# How far above chance an untrained student may score on a task that still separates (MIL AUROC <= 0.60,
# c-index <= 0.55); a trained model (a teacher or the stage-1 student) must clear chance by twice as much.
# Retrieval's is smaller because recall@5 over a gallery of 80 images is about 0.06 by chance.
NEAR_CHANCE = {"zero-shot": 0.05, "linear-probe": 0.05, "retrieval": 0.025, "vqa": 0.05,
               "mil-classification": 0.10, "survival": 0.05}


def task_means(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """task -> the mean of its datasets' headline numbers."""
    return {t: float(sum(v.values()) / len(v)) for t, v in scores.items() if v}


def overall_of(row: dict[str, Any], tasks: tuple[str, ...]) -> float:
    values = [row[t] for t in tasks if t in row and math.isfinite(row[t])]
    return float(sum(values) / len(values)) if values and len(values) == len(tasks) else float("nan")


def separation(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """task -> {chance, untrained, best_teacher, separates}: does the task tell trained from untrained?

    A task separates when the untrained student (mean over its seeds) is near chance
    (<= chance + NEAR_CHANCE[task]) and the best trained model outside stage 2 (a teacher, or the
    stage-1 student's mean over seeds) is well above it (>= chance + 2 NEAR_CHANCE[task]). Chance is
    the mean over the task's datasets of a know-nothing model's score (`steps.chance_scores`).
    """
    untrained = [r for r in rows if r["kind"] == "untrained"]
    teachers = [r for r in rows if r["kind"] in ("teacher", "student")]
    out: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        chance_by_dataset: dict[str, float] = {}
        for r in rows:
            for seed_row in r.get("per_seed") or [r]:
                chance_by_dataset.update((seed_row.get("chance") or {}).get(task, {}))
        if not chance_by_dataset:
            continue
        chance = statistics.fmean(chance_by_dataset.values())
        low = statistics.fmean(r[task] for r in untrained if task in r) if any(task in r for r in untrained) else None
        high = max((r[task] for r in teachers if task in r), default=None)
        tol = NEAR_CHANCE[task]
        separates = low is not None and high is not None and low <= chance + tol and high >= chance + 2 * tol
        out[task] = {"chance": chance, "untrained": low, "best_teacher": high, "separates": bool(separates)}
    return out


def separating_tasks(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(t for t, s in separation(rows).items() if s["separates"])


def results(corpora: list[tuple[int, Any, dict[str, Any]]], tasks: tuple[str, ...] | None = None
            ) -> list[dict[str, Any]]:
    """Rows in table order (teachers, untrained, stage 1, control, stage 2 variants), every run of a model
    merged (corpus seed by corpus seed, student seed by student seed); `overall` over `tasks` (the frozen
    set) or else the separating tasks of these rows. `corpora`: (corpus seed, runner, plan) per corpus."""
    groups: dict[str, list[tuple[int, Any, str, dict[str, Any]]]] = {}
    for corpus, runner, plan in corpora:
        for name, m in plan["models"].items():
            groups.setdefault(m.get("group", name), []).append((corpus, runner, name, m))
    rows = []
    for group, members in sorted(groups.items(), key=lambda g: KIND_ORDER[g[1][0][3]["kind"]]):
        per_seed = []
        for corpus, runner, name, m in members:
            result = runner.steps[m.get("eval_step", f"eval-{name}")].result or {}
            scores = result.get("scores", {})
            per_seed.append({"model": name, "corpus_seed": corpus, **task_means(scores), "scores": scores,
                             "chance": result.get("chance", {})})
        rows.append(merge_seeds(group, members[0][3], per_seed))
    return with_overall(rows, tasks)


def with_overall(rows: list[dict[str, Any]], tasks: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Fill `overall` (and its sd) of every row and seed from the separating tasks (or `tasks`)."""
    tasks = separating_tasks(rows) if tasks is None else tuple(tasks)
    for row in rows:
        for column, of in (("overall", tasks), (ALL_TASKS, TASKS)):
            for seed_row in row.get("per_seed") or []:
                seed_row[column] = overall_of(seed_row, of)
            if row.get("per_seed"):
                values = [s[column] for s in row["per_seed"] if math.isfinite(s[column])]
                row[column] = statistics.fmean(values) if values else float("nan")
                row[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
            else:
                row[column] = overall_of(row, of)
        row["overall_tasks"] = list(tasks)
    return rows


def merge_seeds(group: str, meta: dict[str, Any], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": group, "label": meta["label"], "kind": meta["kind"], "num_seeds": len(per_seed)}
    if meta.get("variant"):
        row["variant"] = meta["variant"]
    for col in TASKS:
        values = [r[col] for r in per_seed if col in r and math.isfinite(r[col])]
        if values:
            row[col] = statistics.fmean(values)
            if len(values) > 1:
                row[f"{col}_sd"] = statistics.stdev(values)
    if len(per_seed) > 1:
        row["per_seed"] = per_seed
    else:
        row["scores"] = per_seed[0].get("scores", {})
        row["chance"] = per_seed[0].get("chance", {})
    return row


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    sd = row.get(f"{col}_sd")
    return f"{v:.3f}" if sd is None or math.isnan(sd) else f"{v:.3f} ± {sd:.3f}"


def format_table(rows: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> str:
    """A markdown table (it also reads well in a terminal). Tasks outside `overall` are marked `(apart)`."""
    inside = set(rows[0].get("overall_tasks", TASKS)) if rows else set(TASKS)
    heads = [SHORT[t] + ("" if t in inside else " (apart)") for t in TASKS]
    lines = ["| model | " + " | ".join(heads) + " | overall | all tasks |", "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        seeds = f" [{r['num_seeds']} runs]" if r.get("num_seeds", 1) > 1 else ""
        lines.append(f"| {r['label']}{seeds} | " + " | ".join(_cell(r, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], plan: dict[str, Any] | None = None) -> list[str]:
    """The two claims the demo checks, stated with the measured numbers (true or not)."""
    teachers = [r for r in rows if r["kind"] == "teacher"]
    control = next((r for r in rows if r["kind"] == "control"), None)
    out = []
    if rows and not rows[0].get("overall_tasks", TASKS):
        return ["no task separates trained from untrained models in this run, so there is no `overall` to compare; "
                "see the per-task columns"]
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
