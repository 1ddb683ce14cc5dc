"""The demo's comparison tables: paired differences to the control over student seeds, with 95 % CIs.

Written by `mmkd demo` next to its results (`comparison.md` for the test sets, `comparison-val.md`
for the validation sets, each with a `.json` twin); docs/DISTILLATION.md copies the test file
verbatim. Every number in it comes from the run's own evaluation results.

Statistics. A stage-2 variant and the control share everything but the stage-2 objective within a
run (corpus seed c, student seed s: data, teachers, stage 1, data order), so each run gives one
paired difference d_cs = variant_cs - control_cs. Reported: every d_cs, their mean, and wins =
#{d_cs > 0}. With one corpus seed the 95 % CI is the t interval over the runs (n - 1 degrees of
freedom: mean ± t · sd / sqrt(n)); it covers student seeds only. With several corpus seeds the runs of
one corpus are not independent (same corpus, same teachers), so the CI is the t interval over the
corpus means m_c = mean_s d_cs (n_corpus - 1 degrees of freedom), which includes the between-corpus
spread; the between-corpus sd (sd of the m_c) and the within-corpus sd (mean over corpora of the sd
over student seeds) are reported beside it. With one run there is no CI.

Selection. On the validation sets (`--eval-split val`), the candidates are ranked by their mean
paired difference in `overall`; the best, with every other choice of the test run, is frozen in
`selection.json` (`mmkd.demo.protocol`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from mmkd.demo.steps import TASKS
from mmkd.demo.table import ALL_TASKS, COLUMNS, SHORT, separation

CONTROL = "student-control"
SELF_LABEL = "student-stage2-self-label"
SELF_DISTILL = "student-stage2-self-distill"


def paired(a: dict[str, Any], b: dict[str, Any], column: str) -> list[float]:
    """Per seed a - b (same seed order); both rows must come from the same student seeds."""
    sa, sb = a.get("per_seed") or [a], b.get("per_seed") or [b]
    return [x[column] - y[column] for x, y in zip(sa, sb) if column in x and column in y]


def paired_runs(a: dict[str, Any], b: dict[str, Any], column: str) -> list[tuple[Any, float]]:
    """Per run (corpus seed, a - b), in run order."""
    sa, sb = a.get("per_seed") or [a], b.get("per_seed") or [b]
    return [(x.get("corpus_seed"), x[column] - y[column]) for x, y in zip(sa, sb) if column in x and column in y]


def summary(runs: list[tuple[Any, float]], level: float = 0.95) -> dict[str, Any]:
    """Mean, CI and spreads of paired differences over runs (see the module docstring): the CI is over
    corpus means when the runs come from several corpus seeds, over the runs otherwise."""
    runs = [(c, d) for c, d in runs if math.isfinite(d)]
    values = [d for _, d in runs]
    by_corpus: dict[Any, list[float]] = {}
    for c, d in runs:
        by_corpus.setdefault(c, []).append(d)
    means = {c: statistics.fmean(v) for c, v in by_corpus.items()}
    out: dict[str, Any] = {"per_seed": values, "wins": sum(d > 0 for d in values), "num_seeds": len(values),
                           "num_corpora": len(by_corpus)}
    if len(by_corpus) > 1:
        mean, lo, hi = mean_ci(list(means.values()), level)
        within = [statistics.stdev(v) for v in by_corpus.values() if len(v) > 1]
        out.update(ci_over="corpus means", corpus_means={str(c): m for c, m in means.items()},
                   between_corpus_sd=statistics.stdev(means.values()),
                   within_corpus_sd=statistics.fmean(within) if within else float("nan"))
    else:
        mean, lo, hi = mean_ci(values, level)
        out.update(ci_over="student seeds (one corpus and one set of teachers)")
    out.update(mean=mean, ci95=[lo, hi], ci95_runs=list(mean_ci(values, level)[1:]))
    return out


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


def _ci(values: list[float] | list[tuple[Any, float]]) -> str:
    runs = [v if isinstance(v, tuple) else (None, v) for v in values]
    stats = summary(runs)
    mean, (lo, hi) = stats["mean"], stats["ci95"]
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
    for own, name in ((SELF_DISTILL, "self-distill"), (SELF_LABEL, "self-label")):
        if own in by_model:
            out += [(f"`{r['variant']}` − `{name}`", r["model"], own) for r in rows
                    if r["kind"] == "stage2" and r["model"] not in (SELF_LABEL, SELF_DISTILL)]
    return [c for c in out if c[1] in by_model and c[2] in by_model]


def comparison_json(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Every paired difference as numbers: comparison -> column -> {per_seed, mean, ci, wins}."""
    by_model = {r["model"]: r for r in rows}
    out: dict[str, Any] = {"meta": meta, "separation": separation(rows), "rows": rows, "paired": {}}
    for label, a, b in comparisons(rows):
        entry = {}
        for col in COLUMNS:
            d = paired_runs(by_model[a], by_model[b], col)
            if d:
                entry[col] = summary(d)
        out["paired"][f"{a} - {b}"] = {"label": label, **entry}
    return out


def run_labels(meta: dict[str, Any]) -> list[str]:
    """One label per run, in run order: the student seed, or corpus/student seed with several corpora."""
    seeds, corpora = meta.get("seeds", []), meta.get("corpus_seeds") or [meta.get("data_seed", 0)]
    return [f"seed {s}" for s in seeds] if len(corpora) < 2 else [f"corpus {c} seed {s}" for c in corpora
                                                                   for s in seeds]


def comparison_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The comparison tables (see the module docstring) as markdown."""
    by_model = {r["model"]: r for r in rows}
    seeds = meta.get("seeds", [])
    corpora = meta.get("corpus_seeds") or [meta.get("data_seed", 0)]
    sep = separation(rows)
    inside = list(rows[0].get("overall_tasks", [])) if rows else []
    frozen = meta.get("frozen_tasks") is not None
    md = [f"Written by `{meta['command']}` ({meta.get('date', '')}; mmkd {meta.get('code_version', '')}; "
          f"{meta.get('minutes', '?')} min wall, reusing {meta.get('reused_steps', 0)} finished steps).", ""]
    if meta.get("selection_hash"):
        md += [f"Frozen choices: `{meta['selection_file']}`, protocol hash `{meta['selection_hash']}`.", ""]
    if meta.get("wrote_selection_hash"):
        md += [f"This run froze the test run's choices in `{meta['wrote_selection']}`, protocol hash "
               f"`{meta['wrote_selection_hash']}`.", ""]
    md += [f"Evaluated on the **{meta['split_name']}**. Student seeds: {', '.join(map(str, seeds))}"
           + (f" (the stage-2 choices were made on the validation sets with seeds "
              f"{', '.join(map(str, meta['selection_seeds']))}; "
              + ("disjoint" if not set(seeds) & set(meta["selection_seeds"]) else "**not disjoint**") + ")"
              if meta.get("selection_seeds") and meta.get("split") == "test" else "")
           + (f". Corpus-and-teacher seeds: {', '.join(map(str, corpora))} (a fresh corpus draw and freshly trained "
              f"teachers each; every student seed on each)" if len(corpora) > 1
              else f". Data and teachers: seed {corpora[0]}, one run each")
           + (f"; synthetic test sets: data seed {meta['test_data_seed']}" if meta.get("test_data_seed") is not None
              else "") + ".", ""]

    md += ["### Which tasks count in `overall`", ""]
    if frozen:
        md += [f"Frozen on the validation sets (the selection file): `overall` = mean of "
               f"{', '.join(SHORT[t] for t in inside) or 'no task'}. Whether each task separates trained from "
               f"untrained models on these sets too (`mmkd.demo.table.separation`), for information:", ""]
    else:
        md += ["A task counts when the untrained student is near chance on it and the best trained model outside "
               "stage 2 (a teacher or the stage-1 student) well above (`mmkd.demo.table.separation`); the others are "
               "shown apart.", ""]
    md += ["| task | chance | untrained student | best teacher or stage 1 | "
           + ("separates here | in `overall` (frozen) |" if frozen else "in `overall` |"),
           "|---|---:|---:|---:|---|" + ("---|" if frozen else "")]
    for t in TASKS:
        st = sep.get(t)
        if st:
            counts = "yes" if t in inside else "no (shown apart)"
            md.append(f"| {SHORT[t]} | {_fmt(st['chance'])} | {_fmt(st['untrained'])} | {_fmt(st['best_teacher'])} | "
                      + (f"{'yes' if st['separates'] else 'no'} | {counts} |" if frozen else f"{counts} |"))
    md += ["", f"`overall` = mean of: {', '.join(SHORT[t] for t in inside) or 'no task'}; `all tasks` = mean of all "
               f"six.", ""]
    if meta.get("test_sets"):
        md += ["### Test images", "", "| dataset | images |", "|---|---|"]
        md += [f"| {name} | {what} |" for name, what in meta["test_sets"].items()]
        md.append("")

    md += [f"### Every model (mean ± sd over {'runs' if len(corpora) > 1 else 'student seeds'}; teachers are one "
           f"run{' per corpus seed' if len(corpora) > 1 else ''})", "",
           "| model | " + " | ".join(SHORT[t] + ("" if t in inside else " (apart)") for t in TASKS)
           + " | overall | all tasks |", "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        md.append(f"| {r['label']} | " + " | ".join(_cell(r, c) for c in COLUMNS) + " |")
    md.append("")

    pairs = comparisons(rows)
    labels = run_labels(meta)
    if pairs and len(seeds) >= 1:
        over = "corpus means" if len(corpora) > 1 else "student seeds"
        for column, title in (("overall", "`overall`"), (ALL_TASKS, "the all-task mean")):
            md += [f"### Paired differences in {title} (same run)", "",
                   "| comparison | " + " | ".join(labels) + f" | mean [95 % CI over {over}] | "
                   + ("between-corpus sd | " if len(corpora) > 1 else "") + "better on |",
                   "|---|" + "---:|" * (len(labels) + 2 + (len(corpora) > 1))]
            for label, a, b in pairs:
                d = paired_runs(by_model[a], by_model[b], column)
                st = summary(d)
                md.append(f"| {label} | " + " | ".join(_fmt(x, True) for _, x in d) + f" | {_ci(d)} | "
                          + (f"{_fmt(st.get('between_corpus_sd'))} | " if len(corpora) > 1 else "")
                          + f"{_wins([x for _, x in d])} |")
            md.append("")
        md += [f"### Paired differences per task: mean [95 % CI over {over}], better on", "",
               "| comparison | " + " | ".join(SHORT[t] for t in TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
        for label, a, b in pairs:
            cells = []
            for t in TASKS:
                d = paired_runs(by_model[a], by_model[b], t)
                cells.append(f"{_ci(d)}, {_wins([x for _, x in d])}" if d else "–")
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
                    d = [(run.get("corpus_seed"), a[ds] - b[ds]) for run, a, b in
                         zip(r.get("per_seed") or [r], _dataset_scores(r, task), _dataset_scores(control, task))
                         if ds in a and ds in b]
                    cells.append(_ci(d))
                seen = " (seen before)" if (meta.get("test_sets") or {}).get(ds, "").startswith("seen") else ""
                md.append(f"| {ds}{seen} | " + " | ".join(cells) + " |")
            md.append("")
    return "\n".join(md).rstrip() + "\n"


def select(rows: list[dict[str, Any]], candidates: tuple[str, ...]) -> dict[str, Any]:
    """The candidate variant with the highest mean paired difference to the control in `overall`."""
    by_model = {r["model"]: r for r in rows}
    ranking = []
    for r in rows:
        if r["kind"] == "stage2" and r.get("variant") in candidates and CONTROL in by_model:
            st = summary(paired_runs(r, by_model[CONTROL], "overall"))
            ranking.append({"variant": r["variant"], "mean": st["mean"], "ci95": st["ci95"], "per_seed": st["per_seed"],
                            "wins": st["wins"]})
    ranking.sort(key=lambda x: -x["mean"] if math.isfinite(x["mean"]) else math.inf)
    return {"chosen": ranking[0]["variant"] if ranking else None, "ranking": ranking}
