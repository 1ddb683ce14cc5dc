"""The demo's comparison tables: paired differences to the control over student seeds, with 95 % CIs.

Written by `mmkd demo` next to its results (`comparison.md` for the test sets, `comparison-val.md`
for the validation sets, each with a `.json` twin); docs/DISTILLATION.md copies the test file
verbatim. Every number in it comes from the run's own evaluation results.

Statistics. A stage-2 variant and the control share everything but the stage-2 objective within a
student seed (data, teachers, stage 1, data order), so each seed gives one paired difference
d_s = variant_s - control_s. Reported: every d_s, their mean, the 95 % CI of the mean from the
t distribution with n - 1 degrees of freedom (mean ± t · sd / sqrt(n)), and wins = #{d_s > 0}.
With one seed there is no CI.

Selection. On the validation sets (`--eval-split val`), the candidates are ranked by their mean
paired difference in `overall`; the best is the variant to run on the test sets with fresh seeds
(`selection.json`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mmkd.demo.steps import TASKS
from mmkd.demo.table import COLUMNS, SHORT, separation

CONTROL = "student-control"
SELF_LABEL = "student-stage2-self-label"


def paired(a: dict[str, Any], b: dict[str, Any], column: str) -> list[float]:
    """Per seed a - b (same seed order); both rows must come from the same student seeds."""
    sa, sb = a.get("per_seed") or [a], b.get("per_seed") or [b]
    return [x[column] - y[column] for x, y in zip(sa, sb) if column in x and column in y]


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t interval over the values (low = high = nan with fewer than two)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _ci(values: list[float]) -> str:
    mean, lo, hi = mean_ci(values)
    return f"{_fmt(mean, True)} [{_fmt(lo, True)}, {_fmt(hi, True)}]" if math.isfinite(lo) else _fmt(mean, True)


def _wins(values: list[float]) -> str:
    return f"{sum(v > 0 for v in values)} of {len(values)}"


def _cell(row: dict[str, Any], col: str) -> str:
    v, sd = row.get(col), row.get(f"{col}_sd")
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.3f}" if sd is None or not math.isfinite(sd) else f"{v:.3f} ± {sd:.3f}"


def _dataset_scores(row: dict[str, Any], task: str) -> list[dict[str, float]]:
    return [(s.get("scores") or {}).get(task, {}) for s in (row.get("per_seed") or [row])]


def comparisons(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(label, minuend model, subtrahend model) of every paired comparison the tables report."""
    by_model = {r["model"]: r for r in rows}
    out = [(f"`{r['variant']}` − control", r["model"], CONTROL) for r in rows if r["kind"] == "stage2"]
    if SELF_LABEL in by_model:
        out += [(f"`{r['variant']}` − `self-label`", r["model"], SELF_LABEL) for r in rows
                if r["kind"] == "stage2" and r["model"] != SELF_LABEL]
    return [c for c in out if c[1] in by_model and c[2] in by_model]


def comparison_json(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Every paired difference as numbers: comparison -> column -> {per_seed, mean, ci, wins}."""
    by_model = {r["model"]: r for r in rows}
    out: dict[str, Any] = {"meta": meta, "separation": separation(rows), "rows": rows, "paired": {}}
    for label, a, b in comparisons(rows):
        entry = {}
        for col in COLUMNS:
            d = paired(by_model[a], by_model[b], col)
            if d:
                mean, lo, hi = mean_ci(d)
                entry[col] = {"per_seed": d, "mean": mean, "ci95": [lo, hi], "wins": sum(x > 0 for x in d),
                              "num_seeds": len(d)}
        out["paired"][f"{a} - {b}"] = {"label": label, **entry}
    return out


def comparison_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The comparison tables (see the module docstring) as markdown."""
    by_model = {r["model"]: r for r in rows}
    seeds = meta.get("seeds", [])
    sep = separation(rows)
    inside = [t for t in TASKS if sep.get(t, {}).get("separates")]
    md = [f"Written by `{meta['command']}` ({meta.get('date', '')}; mmkd {meta.get('code_version', '')}; "
          f"{meta.get('minutes', '?')} min wall, reusing {meta.get('reused_steps', 0)} finished steps).", "",
          f"Evaluated on the **{meta['split_name']}**. Student seeds: {', '.join(map(str, seeds))}"
          + (f" (the stage-2 choices were made on the validation sets with seeds "
             f"{', '.join(map(str, meta['selection_seeds']))}; "
             + ("disjoint" if not set(seeds) & set(meta["selection_seeds"]) else "**not disjoint**") + ")"
             if meta.get("selection_seeds") and meta.get("split") == "test" else "")
          + f". Data and teachers: seed {meta.get('data_seed', 0)}, one run each.", ""]

    md += ["### Which tasks count in `overall`", "",
           "A task counts when the untrained student is near chance on it and the best trained model outside "
           "stage 2 (a teacher or the stage-1 student) well above (`mmkd.demo.table.separation`); the others are "
           "shown apart.", "",
           "| task | chance | untrained student | best teacher or stage 1 | in `overall` |", "|---|---:|---:|---:|---|"]
    for t in TASKS:
        s = sep.get(t)
        if s:
            md.append(f"| {SHORT[t]} | {_fmt(s['chance'])} | {_fmt(s['untrained'])} | {_fmt(s['best_teacher'])} | "
                      f"{'yes' if s['separates'] else 'no (shown apart)'} |")
    md += ["", f"`overall` = mean of: {', '.join(SHORT[t] for t in inside) or 'no task'}.", ""]

    md += ["### Every model (mean ± sd over student seeds; teachers are one run)", "",
           "| model | " + " | ".join(SHORT[t] + ("" if t in inside else " (apart)") for t in TASKS)
           + " | overall |", "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        md.append(f"| {r['label']} | " + " | ".join(_cell(r, c) for c in COLUMNS) + " |")
    md.append("")

    pairs = comparisons(rows)
    if pairs and len(seeds) >= 1:
        md += ["### Paired differences in `overall` (same student seed)", "",
               "| comparison | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95 % CI] | better on |",
               "|---|" + "---:|" * (len(seeds) + 2)]
        for label, a, b in pairs:
            d = paired(by_model[a], by_model[b], "overall")
            md.append(f"| {label} | " + " | ".join(_fmt(x, True) for x in d) + f" | {_ci(d)} | {_wins(d)} |")
        md += ["", "### Paired differences per task: mean [95 % CI], better on", "",
               "| comparison | " + " | ".join(SHORT[t] for t in TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
        for label, a, b in pairs:
            cells = []
            for t in TASKS:
                d = paired(by_model[a], by_model[b], t)
                cells.append(f"{_ci(d)}, {_wins(d)}" if d else "–")
            md.append(f"| {label} | " + " | ".join(cells) + " |")
        md.append("")

    control = by_model.get(CONTROL)
    stage2 = [r for r in rows if r["kind"] == "stage2"]
    teachers = [r for r in rows if r["kind"] == "teacher"]
    if control is not None:
        for task, what in (("zero-shot", "zero-shot balanced accuracy"), ("linear-probe", "linear-probe balanced "
                                                                                          "accuracy"),
                           ("retrieval", "retrieval recall@5")):
            datasets = sorted({d for s in _dataset_scores(control, task) for d in s})
            if not datasets:
                continue
            md += [f"### Per dataset: {what} (mean over seeds; stage 2 as paired difference to the control "
                   f"[95 % CI])", "",
                   "| dataset | best teacher | untrained | stage 1 | control | "
                   + " | ".join(f"`{r['variant']}`" for r in stage2) + " |",
                   "|---|---:|---:|---:|---:|" + "---:|" * len(stage2)]
            for ds in datasets:
                def mean_of(row):
                    values = [s[ds] for s in _dataset_scores(row, task) if ds in s]
                    return statistics.fmean(values) if values else float("nan")

                best = max(teachers, key=mean_of, default=None)
                best_cell = f"{_fmt(mean_of(best))} ({best['model']})" if best is not None else "–"
                cells = [best_cell, _fmt(mean_of(by_model.get("student-untrained", {}))),
                         _fmt(mean_of(by_model.get("student-stage1", {}))), _fmt(mean_of(control))]
                for r in stage2:
                    d = [a[ds] - b[ds] for a, b in zip(_dataset_scores(r, task), _dataset_scores(control, task))
                         if ds in a and ds in b]
                    cells.append(_ci(d))
                md.append(f"| {ds} | " + " | ".join(cells) + " |")
            md.append("")
    return "\n".join(md).rstrip() + "\n"


def select(rows: list[dict[str, Any]], candidates: tuple[str, ...]) -> dict[str, Any]:
    """The candidate variant with the highest mean paired difference to the control in `overall`."""
    by_model = {r["model"]: r for r in rows}
    ranking = []
    for r in rows:
        if r["kind"] == "stage2" and r.get("variant") in candidates and CONTROL in by_model:
            d = paired(r, by_model[CONTROL], "overall")
            mean, lo, hi = mean_ci(d)
            ranking.append({"variant": r["variant"], "mean": mean, "ci95": [lo, hi], "per_seed": d,
                            "wins": sum(x > 0 for x in d)})
    ranking.sort(key=lambda x: -x["mean"] if math.isfinite(x["mean"]) else math.inf)
    return {"chosen": ranking[0]["variant"] if ranking else None, "ranking": ranking}
