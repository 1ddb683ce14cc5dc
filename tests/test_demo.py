"""`mmkd demo`: the step runner, the results table, and the quick demo end to end through the CLI."""

import json
import math
import os
from pathlib import Path

import pytest

from conftest import run_cli
from mmkd.demo.jobs import Runner, Step
from mmkd.demo.recipe import (DEFAULT_VARIANT, SELECTION_CANDIDATES, SELECTION_SEEDS, STAGE2_VARIANTS,
                              TEST_CORPUS_SEEDS, TEST_DATA_SEED, TEST_STUDENT_SEEDS, USED_DATA_SEEDS,
                              make_recipe)
import numpy as np

from mmkd.demo.steps import TASKS
from mmkd.demo.table import format_table, separation, task_means, verdict, with_overall
from mmkd.errors import UsageError

def record_call(path: str, value: int) -> dict:
    """A step body for the runner tests: appends to a file (so calls in forked children are seen)."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return {"value": value}


def fail_step(message: str) -> dict:
    print("about to fail")
    raise ValueError(message)


def _calls(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("jobs", [1, 2])
def test_runner_respects_dependencies_and_reuses_finished_steps(tmp_path, jobs):
    log = tmp_path / "calls.txt"

    def build(value_b=2):
        r = Runner(tmp_path / "demo", jobs=jobs, echo=lambda s: None)
        r.add(Step("a", "test_demo:record_call", {"path": str(log), "value": 1}))
        r.add(Step("b", "test_demo:record_call", {"path": str(log), "value": value_b}, deps=("a",)))
        r.add(Step("c", "test_demo:record_call", {"path": str(log), "value": 3}, deps=("b",)))
        r.add(Step("d", "test_demo:record_call", {"path": str(log), "value": 4}))
        return r

    records = build().run()
    assert sorted(records) == ["a", "b", "c", "d"]
    calls = _calls(log)
    assert sorted(calls) == [1, 2, 3, 4]
    assert calls.index(1) < calls.index(2) < calls.index(3)
    assert records["c"]["result"] == {"value": 3}
    # Everything is done: a rerun calls nothing.
    build().run()
    assert len(_calls(log)) == 4
    # b's arguments change: b and the step after it (c) run again, a and d are reused.
    runner = build(value_b=20)
    runner.run()
    assert _calls(log)[4:] == [20, 3]
    assert runner.steps["c"].result == {"value": 3}


@pytest.mark.parametrize("jobs", [1, 2])
def test_runner_reports_a_failed_step_with_its_log(tmp_path, jobs):
    r = Runner(tmp_path / "demo", jobs=jobs, echo=lambda s: None)
    r.add(Step("boom", "test_demo:fail_step", {"message": "the reason"}))
    r.add(Step("after", "test_demo:record_call", {"path": str(tmp_path / "x"), "value": 1}, deps=("boom",)))
    with pytest.raises(RuntimeError, match="boom") as info:
        r.run()
    assert "the reason" in str(info.value)
    assert not (tmp_path / "x").exists()  # the dependent step never ran
    assert not r.marker("boom").exists()
    if jobs > 1:  # the forked step's output went to its log
        assert "about to fail" in r.log("boom").read_text()


def _row(name, kind, value, zs=None, chance=0.25, **extra):
    scores = {t: {"d": value} for t in TASKS}
    if zs is not None:
        scores["zero-shot"] = {"d1": zs, "d2": zs + 0.2}
    return {"model": name, "label": name, "kind": kind, **task_means(scores), "scores": scores,
            "chance": {t: {d: chance for d in v} for t, v in scores.items()}, **extra}


def test_table_and_verdict_state_the_measured_numbers():
    rows = with_overall([_row("expert", "teacher", 0.59), _row("untrained", "untrained", 0.26),
                         _row("s1", "student", 0.5), _row("control", "control", 0.55),
                         _row("distilled", "stage2", 0.58, zs=0.6)])
    assert rows[4]["zero-shot"] == pytest.approx(0.7)
    assert rows[4]["overall"] == pytest.approx((0.7 + 5 * 0.58) / 6)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| model | zero-shot | lin. probe |")
    assert "| distilled | 0.700 | 0.580 |" in table
    lines = verdict(rows)
    assert lines[0].startswith("yes") and "best teacher (expert) 0.590" in lines[0]
    assert lines[1].startswith("yes") and "vs control: overall +0.050" in lines[1]
    rows[4] = _row("distilled", "stage2", 0.5)
    lines = verdict(with_overall(rows))
    assert lines[0].startswith("NO") and lines[1].startswith("NO") and "-0.050" in lines[1]


def test_a_task_an_untrained_student_solves_is_shown_apart_from_overall():
    untrained = _row("untrained", "untrained", 0.27)
    untrained["mil-classification"] = 0.96  # chance 0.25 here; far above it
    untrained["scores"]["mil-classification"] = {"d": 0.96}
    rows = [_row("expert", "teacher", 0.8), untrained, _row("control", "control", 0.6),
            _row("distilled", "stage2", 0.7)]
    rows[3]["mil-classification"] = 0.1
    sep = separation(rows)
    assert sep["zero-shot"] == {"chance": 0.25, "untrained": 0.27, "best_teacher": 0.8, "separates": True}
    assert not sep["mil-classification"]["separates"]
    rows = with_overall(rows)
    inside = [t for t in TASKS if t != "mil-classification"]
    assert rows[3]["overall_tasks"] == inside
    assert rows[3]["overall"] == pytest.approx(0.7)  # the MIL column (0.1) is not averaged in
    assert "MIL (apart)" in format_table(rows).splitlines()[0]
    # a teacher no better than the untrained student does not separate either
    flat = with_overall([_row("expert", "teacher", 0.28), _row("untrained", "untrained", 0.26)])
    assert flat[0]["overall_tasks"] == [] and math.isnan(flat[0]["overall"])


def test_paired_differences_and_t_intervals_over_seeds():
    from scipy import stats

    from mmkd.demo.compare import comparison_json, comparison_markdown, mean_ci, select

    control = [0.50, 0.52, 0.49, 0.51, 0.50]
    gains = [0.02, 0.01, 0.03, -0.005, 0.015]

    def seeded(name, kind, values, **extra):
        per_seed = [_row(f"{name}-s{i}", kind, v) for i, v in enumerate(values)]
        row = {"model": name, "label": name, "kind": kind, "num_seeds": len(values), "per_seed": per_seed, **extra}
        row.update({t: sum(values) / len(values) for t in TASKS})
        return row

    rows = with_overall([_row("expert", "teacher", 0.7), seeded("student-untrained", "untrained", [0.26] * 5),
                         seeded("student-control", "control", control),
                         seeded("student-stage2-x", "stage2", [c + g for c, g in zip(control, gains)], variant="x"),
                         seeded("student-stage2-y", "stage2", [c - 0.01 for c in control], variant="y")])
    mean, lo, hi = mean_ci(gains)
    ref_lo, ref_hi = stats.t.interval(0.95, len(gains) - 1, loc=np.mean(gains), scale=stats.sem(gains))
    assert (mean, lo, hi) == pytest.approx((np.mean(gains), ref_lo, ref_hi))
    data = comparison_json(rows, {"seeds": [0, 1, 2, 3, 4]})
    x = data["paired"]["student-stage2-x - student-control"]["overall"]
    assert x["per_seed"] == pytest.approx(gains) and x["wins"] == 4 and x["ci95"] == pytest.approx([ref_lo, ref_hi])
    md = comparison_markdown(rows, {"command": "mmkd demo --eval-split test", "split": "test", "split_name": "test sets",
                                    "seeds": [10, 11, 12, 13, 14], "selection_seeds": [0, 1, 2]})
    assert "| `x` − control | +0.020 | +0.010 | +0.030 | -0.005 | +0.015 |" in md
    assert f"{np.mean(gains):+.3f} [{ref_lo:+.3f}, {ref_hi:+.3f}] | 4 of 5 |" in md
    assert "disjoint" in md and "not disjoint" not in md
    assert select(rows, ("x", "y"))["chosen"] == "x"
    assert select(rows, ("y",))["chosen"] == "y"


def test_recipe_gives_teachers_an_advantage_and_rejects_unknown_variants():
    recipe = make_recipe()
    experts = [t for t in recipe.teachers if t.modalities]
    assert len(experts) >= 4 and any(t.kind == "hf" for t in experts)
    assert any(not t.modalities and t.fraction < recipe.student_fraction for t in recipe.teachers)
    assert 0.1 <= recipe.student_fraction <= 0.3
    assert all(t.epochs >= 8 for t in experts)
    routes = recipe.routes()
    assert routes["blood-cells"] == ["pathology"] and len(routes) == 8
    assert recipe.stage2_variants == (DEFAULT_VARIANT,) and DEFAULT_VARIANT in SELECTION_CANDIDATES
    assert not set(SELECTION_SEEDS) & set(TEST_STUDENT_SEEDS) and len(TEST_STUDENT_SEEDS) >= 3
    assert len(TEST_CORPUS_SEEDS) >= 3 and TEST_DATA_SEED not in (*USED_DATA_SEEDS, *TEST_CORPUS_SEEDS)
    assert make_recipe(variants=("projection", "decision")).stage2_variants == ("projection", "decision")
    assert set(STAGE2_VARIANTS) >= {"control", "decision", "projection", "adaptor", "relational", "self-label"}
    both = make_recipe(variants=("self-label", "decision-gated:caption-vocab"))
    assert both.stage2_variants == ("self-label", "decision-gated:caption-vocab")
    for bad in ("telepathy", "projection:caption-vocab", "control"):
        with pytest.raises(UsageError, match="--stage2"):
            make_recipe(variants=(bad,))
    with pytest.raises(UsageError, match="--eval-split"):
        make_recipe(eval_split="train")


_RUNNER_SCRIPT = """
import sys
from pathlib import Path
from mmkd.demo.jobs import Runner, Step

root, calls = Path(sys.argv[1]), sys.argv[2]
r = Runner(root, jobs=1, echo=lambda s: None)
r.add(Step("a", "steps_here:record", {"path": calls, "value": 1}))
r.add(Step("b", "steps_here:record", {"path": calls, "value": 2, "inside": str(root.resolve() / "runs" / "b")},
           deps=("a",)))
r.run()
"""


def test_a_code_change_recomputes_demo_steps_and_a_copied_folder_reuses_them(tmp_path):
    """Step signatures hold the code version (package version + a hash of its sources) and paths relative to the
    demo folder. Runs a private copy of the package in a subprocess, so editing it touches nobody else's code."""
    import shutil
    import subprocess
    import sys

    import mmkd

    src = tmp_path / "src"
    shutil.copytree(Path(mmkd.__file__).parent, src / "mmkd", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (tmp_path / "steps_here.py").write_text(
        "def record(path, value, inside=''):\n    open(path, 'a').write(f'{value}\\n')\n    return {'value': value}\n")
    (tmp_path / "run.py").write_text(_RUNNER_SCRIPT)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{tmp_path}"}

    def run(root):
        r = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(root), str(calls)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return _calls(calls)

    demo = tmp_path / "demo"
    assert run(demo) == [1, 2]
    assert run(demo) == [1, 2]  # nothing changed: both reused
    marker = json.loads((demo / "steps" / "b.json").read_text())
    assert marker["code_version"].startswith(f"{mmkd.__version__}+")
    # A change to a module that only prints tables keeps every step ...
    with open(src / "mmkd" / "demo" / "table.py", "a") as f:
        f.write("\n# a presentation-only edit\n")
    assert run(demo) == [1, 2]
    # ... a change to code the steps run recomputes them.
    with open(src / "mmkd" / "evaluation" / "metrics.py", "a") as f:
        f.write("\n# an edit to the evaluation code\n")
    assert run(demo) == [1, 2, 1, 2]
    assert json.loads((demo / "steps" / "b.json").read_text())["code_version"] != marker["code_version"]
    # A copied folder reuses everything (its own paths count relative to it).
    shutil.copytree(demo, tmp_path / "elsewhere" / "demo-copy")
    assert run(tmp_path / "elsewhere" / "demo-copy") == [1, 2, 1, 2]


def test_the_validation_plan_uses_the_validation_catalog_and_builds_both_controls(tmp_path):
    from mmkd.demo.cli import _plan

    recipe = make_recipe(quick=True, variants=(DEFAULT_VARIANT, "self-label", f"{DEFAULT_VARIANT}:caption-vocab",
                                               "self-distill", f"{DEFAULT_VARIANT}:caption-vocab-no-names"),
                         student_seeds=(0, 1), eval_split="val")
    paths = {name: str(tmp_path / f"{name}.csv") for name in
             ["student_pairs", "image_only", "image_only_no_names", *(f"teacher-{t.name}" for t in recipe.teachers)]}
    paths.update(decision_vocab=str(tmp_path / "v.yaml"), decision_vocab_captions=str(tmp_path / "vc.yaml"),
                 decision_vocab_captions_no_names=str(tmp_path / "vn.yaml"),
                 catalog=str(tmp_path / "catalog.yaml"), catalog_val=str(tmp_path / "catalog-val.yaml"))
    counts = {name: {"ct": 4} for name in paths}
    runner = Runner(tmp_path / "demo", jobs=1, echo=lambda s: None)
    plan = _plan(runner, recipe, {"paths": paths, "counts": counts, "class_prompts": {}}, tmp_path / "demo")
    steps = runner.steps
    evals = [n for n in steps if n.startswith("eval")]
    assert evals and all(n.startswith("eval-val-") for n in evals)
    assert {steps[n].kwargs["catalog"] for n in evals} == {str((tmp_path / "catalog-val.yaml").resolve())}
    assert "report-val" in steps and plan["report_step"] == "report-val"
    for seed in (0, 1):
        assert steps[f"untrained-s{seed}"].kwargs["seed"] == seed and f"eval-val-student-untrained-s{seed}" in steps
        own = steps[f"stage2-self-label-s{seed}"].kwargs
        assert own["self_label"] and own["routes_file"].endswith(f"expert-gate-s{seed}.json")
        assert own["overrides"]["distill.lambda_decision"] > 0 and not own["overrides"].get("distill.lambda_fd")
        assert f"expert-gate-s{seed}" in steps[f"stage2-self-label-s{seed}"].deps
        words = steps[f"stage2-{DEFAULT_VARIANT}:caption-vocab-s{seed}"].kwargs["overrides"]
        same = steps[f"stage2-{DEFAULT_VARIANT}-s{seed}"].kwargs["overrides"]
        same_kwargs = steps[f"stage2-{DEFAULT_VARIANT}-s{seed}"].kwargs
        assert words["distill.decision_vocab"].endswith("vc.yaml") and same["distill.decision_vocab"].endswith("v.yaml")
        assert {k: v for k, v in words.items() if k != "distill.decision_vocab"} == \
            {k: v for k, v in same.items() if k != "distill.decision_vocab"}
        # its experts are gated with its own vocabulary
        assert steps[f"expert-gate-captions-s{seed}"].kwargs["vocab"].endswith("vc.yaml")
        assert f"expert-gate-captions-s{seed}" in steps[f"stage2-{DEFAULT_VARIANT}:caption-vocab-s{seed}"].deps
        # without class names: its own vocabulary, image-only rows and gate
        nameless = steps[f"stage2-{DEFAULT_VARIANT}:caption-vocab-no-names-s{seed}"]
        assert nameless.kwargs["overrides"]["distill.decision_vocab"].endswith("vn.yaml")
        assert nameless.kwargs["overrides"]["data.image_only_path"].endswith("image_only_no_names.csv")
        assert steps[f"expert-gate-no-names-s{seed}"].kwargs["vocab"].endswith("vn.yaml")
        assert f"expert-gate-no-names-s{seed}" in nameless.deps
        # self-distillation: the stage-1 student of this seed, extracted and aligned into a store of its own, is
        # the only teacher; the variant's every term is on, the same steps and image-only images
        own = steps[f"stage2-self-distill-s{seed}"]
        assert steps[f"extract-self-s{seed}"].kwargs["students"] == {"student-self": steps[f"stage1-s{seed}"]
                                                                     .kwargs["run_dir"]}
        assert steps[f"extract-self-s{seed}"].kwargs["teachers"] == {}
        assert own.kwargs["store"] == steps[f"align-self-s{seed}"].kwargs["store"] != same_kwargs["store"]
        assert own.kwargs["self_label"] and {f"extract-self-s{seed}", f"align-self-s{seed}"} <= set(own.deps)
        assert own.kwargs["overrides"] == steps[f"stage2-{DEFAULT_VARIANT}-s{seed}"].kwargs["overrides"]
        assert own.kwargs["steps"] == same_kwargs["steps"] and own.kwargs["routes_file"] == same_kwargs["routes_file"]


def _selection(tmp_path, **changes):
    """A selection file as the validation run writes it, from rows of the table tests."""
    from mmkd.demo.protocol import make_protocol, selection_document

    rows = with_overall([_row("expert", "teacher", 0.59), _row("untrained", "untrained", 0.26)])
    protocol = make_protocol(DEFAULT_VARIANT, rows, make_recipe(student_seeds=(0, 1, 2), eval_split="val"), [0],
                             TEST_STUDENT_SEEDS, TEST_CORPUS_SEEDS, TEST_DATA_SEED)
    protocol.update(changes)
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(selection_document(protocol, [], list(SELECTION_CANDIDATES), "mmkd demo", "0"), indent=1))
    return path


def test_the_selection_file_freezes_every_choice_under_a_hash_of_its_content(tmp_path):
    import hashlib

    from mmkd.demo.protocol import read_selection

    path = _selection(tmp_path)
    doc = json.loads(path.read_text())
    body = {k: v for k, v in doc.items() if k != "hash"}
    assert doc["hash"] == hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    p = doc["protocol"]
    assert p["variant"] == DEFAULT_VARIANT and p["overall_tasks"] == list(TASKS)
    assert p["controls"] == ["self-distill", f"{DEFAULT_VARIANT}:caption-vocab-no-names"]
    assert not set(p["test_student_seeds"]) & set(p["selection_student_seeds"]) and len(p["test_student_seeds"]) >= 3
    assert len(p["test_corpus_seeds"]) >= 3 and p["test_data_seed"] not in p["used_data_seeds"]
    assert p["stage2"]["overrides"]["self-distill"]["distill.lambda_fd"] > 0  # every term on
    assert read_selection(path, quick=False) == doc
    # One changed number, a new key, a missing key, another scale: each refused, naming the file.
    edited = path.read_text().replace('"test_data_seed": 1009', '"test_data_seed": 0')
    assert edited != path.read_text()
    for text, words in ((edited, "was changed after"),
                        (path.read_text().replace('"variant":', '"variannt": 1, "variant":'), "did you mean 'variant'"),
                        (json.dumps({k: v for k, v in doc.items() if k != "ranking"}), "'ranking' is missing"),
                        ("{not json", "not JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(UsageError, match=words) as info:
            read_selection(bad, quick=False)
        assert str(bad) in str(info.value)
    with pytest.raises(UsageError, match="--quick"):
        read_selection(path, quick=True)
    with pytest.raises(UsageError, match="does not exist"):
        read_selection(tmp_path / "absent.json", quick=False)


def test_the_test_run_refuses_to_run_without_an_unchanged_selection(tmp_path):
    r = run_cli("demo", "--quick", "--eval-split", "test", "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "--selection" in r.stderr and "Traceback" not in r.stderr
    path = _selection(tmp_path, quick=True)
    path.write_text(path.read_text().replace('"lr": 0.0005', '"lr": 0.001'))
    r = run_cli("demo", "--quick", "--eval-split", "test", "--selection", str(path), "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and str(path) in r.stderr and "changed" in r.stderr and "Traceback" not in r.stderr
    good = _selection(tmp_path, quick=True)
    r = run_cli("demo", "--quick", "--eval-split", "test", "--selection", str(good), "--stage2", "projection",
                "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "--stage2" in r.stderr and "frozen" in r.stderr
    assert not (tmp_path / "d").exists()


def test_the_ci_over_corpus_means_includes_the_between_corpus_spread():
    from scipy import stats

    from mmkd.demo.compare import summary

    diffs = {20: [0.05, 0.07, 0.06], 21: [0.01, 0.00, 0.02], 22: [0.09, 0.08, 0.10]}
    runs = [(c, d) for c, ds in diffs.items() for d in ds]
    got = summary(runs)
    means = [np.mean(ds) for ds in diffs.values()]
    lo, hi = stats.t.interval(0.95, len(means) - 1, loc=np.mean(means), scale=stats.sem(means))
    assert got["ci_over"] == "corpus means" and got["num_corpora"] == 3 and got["num_seeds"] == 9
    assert got["mean"] == pytest.approx(np.mean(means)) and got["ci95"] == pytest.approx([lo, hi])
    assert got["between_corpus_sd"] == pytest.approx(np.std(means, ddof=1))
    assert got["within_corpus_sd"] == pytest.approx(np.mean([np.std(ds, ddof=1) for ds in diffs.values()]))
    # The interval over the nine runs as if independent is narrower: it leaves the corpus spread out.
    naive = stats.t.interval(0.95, 8, loc=np.mean(means), scale=stats.sem(sum(diffs.values(), [])))
    assert got["ci95_runs"] == pytest.approx(list(naive)) and naive[1] - naive[0] < hi - lo
    one = summary([(0, d) for d in diffs[20]])
    assert one["ci_over"].startswith("student seeds") and "between_corpus_sd" not in one


def test_caption_vocabulary_without_names_drops_every_caption_naming_a_class():
    import re

    import pandas as pd

    from mmkd.demo.data import caption_vocabulary

    vocab = {"chest-xray": {"classnames": ["normal", "pneumonia"], "templates": ["a chest x-ray showing {}."]},
             "blood-cells": {"classnames": ["basophil", "ig"], "templates": ["{}"]}}
    pairs = pd.DataFrame([
        ("chest-xray", "normal", "Chest radiograph, Normal."), ("chest-xray", "normal", "clear lungs, no opacity"),
        ("chest-xray", "pneumonia", "Pneumonia seen on this film"), ("chest-xray", "pneumonia", "lobar consolidation"),
        ("chest-xray", "pneumonia", "abnormal pneumonias? no: patchy opacity"),
        ("blood-cells", "basophil", "a basophil"), ("blood-cells", "ig", "an IG cell"),
        ("blood-cells", "ig", "immature granulocyte")], columns=["modality", "label", "caption"])
    kept = caption_vocabulary(pairs, vocab, per_class=8, seed=0)
    assert kept["chest-xray"]["prompts"]["normal"] == sorted(["Chest radiograph, Normal.", "clear lungs, no opacity"],
                                                             key=kept["chest-xray"]["prompts"]["normal"].index)
    none = caption_vocabulary(pairs, vocab, per_class=8, seed=0, without_names=True)
    assert set(none) == {"chest-xray"}  # every basophil caption names its class: blood cells are left out
    texts = [t for ts in none["chest-xray"]["prompts"].values() for t in ts]
    assert sorted(texts) == ["abnormal pneumonias? no: patchy opacity", "clear lungs, no opacity", "lobar consolidation"]
    for t in texts:  # an independent word check: no class name as a whole word
        assert not {"normal", "pneumonia"} & set(re.findall(r"[a-z]+", t.lower()))


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    r = run_cli("demo", "--quick", "--out", str(tmp_path))
    assert r.returncode == 2
    assert "--out" in r.stderr and "not empty" in r.stderr
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_quick_demo_end_to_end_then_reuses_every_step(tmp_path):
    from mmkd import load_teacher

    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "--out", str(out), timeout=1200)  # the validation sets: the default
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((out / "results-val.json").read_text())
    rows = {row["model"]: row for row in results["rows"]}
    kinds = [row["kind"] for row in results["rows"]]
    assert kinds.count("teacher") == 5 and kinds.count("untrained") == 1 and kinds.count("student") == 1
    assert kinds.count("control") == 1 and kinds.count("stage2") == 1
    inside = results["rows"][0]["overall_tasks"]
    for row in results["rows"]:  # every model has a number for all six task types
        assert all(t in row and math.isfinite(row[t]) for t in TASKS), row
        assert row["overall_tasks"] == inside
        if inside:  # overall averages the tasks that separate trained from untrained models, and only those
            assert row["overall"] == pytest.approx(sum(row[t] for t in inside) / len(inside))
        else:
            assert math.isnan(row["overall"])
        assert row["all-tasks"] == pytest.approx(sum(row[t] for t in TASKS) / len(TASKS))
    # The printed table and the claims, whatever they measure.
    assert "| control: stage 1 + the same steps, CLIP loss only |" in r.stdout
    assert "| student, untrained (random initialisation) |" in r.stdout
    assert ("vs control: overall" in r.stdout and "best teacher" in r.stdout) or "no task separates" in r.stdout
    assert "report.html" in r.stdout
    assert (out / "report-val" / "report.html").is_file() and list((out / "report-val" / "plots").glob("*.png"))
    assert not (out / "eval").exists() and not (out / "selection.json").exists()  # one seed selects nothing
    # The comparison file names the command that wrote it, the seeds and the untrained floor.
    comparison = (out / "comparison-val.md").read_text()
    assert f"Written by `mmkd demo --quick --eval-split val --out {out}`" in comparison
    assert "Which tasks count in `overall`" in comparison and "student, untrained" in comparison
    assert set(json.loads((out / "comparison-val.json").read_text())["paired"]) == {
        "student-stage2-decision-gated+projection-modality - student-control"}
    # Teachers were saved in their libraries' formats and load back through mmkd.load_teacher.
    assert (out / "teachers" / "radiology" / "open_clip_config.json").is_file()
    assert (out / "teachers" / "eye-brain" / "config.json").is_file()
    hf = load_teacher(f"hf:{out / 'teachers' / 'eye-brain'}")
    oc = load_teacher(f"local-dir:{out / 'teachers' / 'pathology'}")
    assert hf.encode_text(["a fundus photograph showing mild diabetic retinopathy."]).shape == (1, hf.embed_dim)
    assert oc.embed_dim == 96 and hf.embed_dim != oc.embed_dim  # heterogeneous teachers
    store = json.loads((out / "steps" / "extract.json").read_text())["result"]
    assert set(store["teachers"]) == {name for name, row in rows.items() if row["kind"] == "teacher"}
    gate = json.loads((out / "runs" / "expert-gate.json").read_text())
    assert set(gate["routes"]) == {"ct", "mri", "histopathology", "dermoscopy", "chest-xray", "breast-ultrasound",
                                   "fundus", "blood-cells"}
    for modality, experts in gate["routes"].items():  # an expert teaches only where it beat the student
        assert all(gate["accuracy"][t][modality] > gate["accuracy"]["student"][modality] for t in experts)
    stage2 = json.loads((out / "steps" / "stage2-decision-gated+projection-modality.json").read_text())["result"]
    if any(gate["routes"].values()):
        assert stage2["final_terms"]["decision"] > 0  # the distillation term was on
    control = json.loads((out / "steps" / "control.json").read_text())["result"]
    assert control["final_terms"]["decision"] == 0 and control["num_steps"] == stage2["num_steps"]
    # A second run reuses every step and prints the same table.
    again = run_cli("demo", "--quick", "--out", str(out), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout and "start:" not in again.stdout
    assert json.loads((out / "results-val.json").read_text())["rows"] == results["rows"]
    assert os.path.getmtime(out / "steps" / "stage1.json") < os.path.getmtime(out / "results-val.json")


def test_hf_teacher_tokenizer_knows_every_word_of_its_texts(tmp_path):
    from mmkd.demo.teachers import build_word_tokenizer

    texts = ["Chest radiograph showing pneumonia.", "a fundus photograph showing mild diabetic retinopathy."]
    tok = build_word_tokenizer(tmp_path / "tok", texts, context_length=24)
    ids = tok(["chest radiograph showing mild pneumonia."])["input_ids"][0]
    assert tok.unk_token_id not in ids and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok(["an unseen word"])["input_ids"][0].count(tok.unk_token_id) == 3


@pytest.mark.slow
def test_quick_selection_then_a_test_run_that_reads_the_frozen_file(tmp_path):
    """The validation run freezes its choices; the test run takes them from the file, evaluates fresh synthetic
    test sets, runs the self-distillation control through extraction and alignment, and writes the hash into every
    output. The selection is resized to two corpus seeds x two student seeds (rewritten with its new hash, as a
    validation run writes it) so that the test stays a few minutes."""
    from mmkd.demo.protocol import selection_document

    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "--student-seeds", "0,1", "--stage2", f"projection,{DEFAULT_VARIANT}", "--out",
                str(out), timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((out / "selection.json").read_text())
    assert doc["protocol"]["variant"] in ("projection", DEFAULT_VARIANT)
    assert f"protocol hash `{doc['hash']}`" in (out / "comparison-val.md").read_text()  # the selection run names it
    assert json.loads((out / "comparison-val.json").read_text())["meta"]["wrote_selection_hash"] == doc["hash"]
    assert doc["protocol"]["overall_tasks"] == json.loads((out / "results-val.json").read_text())["rows"][0][
        "overall_tasks"]
    protocol = {**doc["protocol"], "test_corpus_seeds": [20, 21], "test_student_seeds": [10, 11],
                "variant": DEFAULT_VARIANT, "controls": ["self-distill", f"{DEFAULT_VARIANT}:caption-vocab-no-names"]}
    resized = selection_document(protocol, doc["ranking"], doc["candidates"], doc["command"], doc["code_version"])
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(resized))
    r = run_cli("demo", "--quick", "--eval-split", "test", "--selection", str(path), "--out", str(out), timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    digest = resized["hash"]
    results = json.loads((out / "results.json").read_text())
    comparison = json.loads((out / "comparison.json").read_text())
    assert results["selection_hash"] == comparison["meta"]["selection_hash"] == digest
    assert json.loads((out / "recipe.json").read_text())["selection_hash"] == digest
    assert digest in (out / "results.md").read_text() and f"protocol hash `{digest}`" in (out / "comparison.md").read_text()
    rows = {row["model"]: row for row in results["rows"]}
    assert all(row["overall_tasks"] == protocol["overall_tasks"] for row in rows.values())  # frozen, not recomputed
    control = rows["student-control"]
    assert [(s["corpus_seed"], s["model"]) for s in control["per_seed"]] == [
        (20, "student-control-s10"), (20, "student-control-s11"), (21, "student-control-s10"),
        (21, "student-control-s11")]
    paired = comparison["paired"][f"student-stage2-{DEFAULT_VARIANT} - student-control"]["all-tasks"]
    assert paired["num_corpora"] == 2 and paired["ci_over"] == "corpus means" and len(paired["per_seed"]) == 4
    assert f"student-stage2-{DEFAULT_VARIANT} - student-stage2-self-distill" in comparison["paired"]
    # fresh synthetic test sets (a data seed no run used), the real ones marked as seen before
    sets = comparison["meta"]["test_sets"]
    assert all(v.startswith("unseen") for k, v in sets.items() if k.startswith("synth-"))
    assert all(v.startswith("seen before") for k, v in sets.items() if k.startswith("real-"))
    catalog = (out / "corpus-20" / "data" / "catalog.yaml").read_text()
    assert "path: synth-test/" in catalog and "path: synth/" not in catalog
    synth_test = json.loads((out / "corpus-20" / "data" / "synth-test" / "manifest.json").read_text())
    assert synth_test["params"]["seed"] == protocol["test_data_seed"] not in protocol["used_data_seeds"]
    # self-distillation: the stage-1 student alone in its store, every term on
    for corpus in (20, 21):
        steps = out / f"corpus-{corpus}" / "steps"
        assert json.loads((steps / "extract-self-s10.json").read_text())["result"]["teachers"] == ["student-self"]
        terms = json.loads((steps / "stage2-self-distill-s10.json").read_text())["result"]["final_terms"]
        assert terms["fd"] > 0 and terms["icl"] > 0 and "decision" in terms


def test_the_test_comparison_names_its_selection_hash_frozen_tasks_and_seen_test_sets():
    from mmkd.demo.compare import comparison_json, comparison_markdown

    def runs(name, kind, values, **extra):
        per_seed = [{**_row(f"{name}-c{c}-s{s}", kind, v, zs=v), "corpus_seed": c}
                    for (c, s), v in zip([(20, 10), (20, 11), (21, 10), (21, 11)], values)]
        return {"model": name, "label": name, "kind": kind, "num_seeds": 4, "per_seed": per_seed, **extra,
                **{t: float(np.mean([p[t] for p in per_seed])) for t in TASKS}}

    control = [0.50, 0.52, 0.40, 0.42]
    rows = with_overall([_row("expert", "teacher", 0.7), runs("student-untrained", "untrained", [0.26] * 4),
                         runs("student-control", "control", control),
                         runs("student-stage2-x", "stage2", [c + 0.05 for c in control], variant="x")],
                        tasks=("zero-shot", "retrieval"))
    assert rows[3]["overall_tasks"] == ["zero-shot", "retrieval"]  # the frozen set, though every task separates
    meta = {"command": "mmkd demo --eval-split test --selection s.json", "split": "test", "split_name": "test sets",
            "seeds": [10, 11], "corpus_seeds": [20, 21], "selection_seeds": [0, 1, 2], "selection_file": "s.json",
            "selection_hash": "abc123", "frozen_tasks": ["zero-shot", "retrieval"], "test_data_seed": 1009,
            "test_sets": {"d1": "unseen (synthetic, data seed 1009, never used before)",
                          "d2": "seen before (the shipped test split, evaluated by earlier runs)"}}
    md = comparison_markdown(rows, meta)
    assert "protocol hash `abc123`" in md and "in `overall` (frozen)" in md
    assert "| corpus 20 seed 10 | corpus 20 seed 11 | corpus 21 seed 10 | corpus 21 seed 11 |" in md
    assert "| d2 (seen before) |" in md and "| d1 |" in md
    assert "mean [95 % CI over corpus means] | between-corpus sd |" in md
    data = comparison_json(rows, meta)
    gain = data["paired"]["student-stage2-x - student-control"]["overall"]
    assert gain["per_seed"] == pytest.approx([0.05] * 4) and gain["num_corpora"] == 2
    assert data["meta"]["selection_hash"] == "abc123"
