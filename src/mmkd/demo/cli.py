"""`mmkd demo`: the whole pipeline end to end on built-in data, with a results table.

real-mini + synthetic corpus -> expert teachers (open_clip and transformers formats) ->
stage 1 (student, CLIP loss) -> feature extraction + availability -> alignment -> stage 2
(distillation) and its control (the same steps with the CLIP loss alone) -> evaluation of
every model on six task types -> `mmkd report`. See `mmkd.demo.recipe` for what each part sees.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Run the whole of mmkd on built-in data (no downloads): four real modalities shipped with mmkd
(chest X-ray, breast ultrasound, fundus, blood cells; captions made from class names) and four
synthetic ones (CT, brain MRI, histopathology, dermoscopy; `mmkd synth`).

  1. data        both corpora; the student gets 20 % of every modality's captioned pairs, the
                 rest of the images are image-only samples (no caption); every evaluation set
                 has a validation set (data/catalog-val.yaml) and a test set (data/catalog.yaml)
  2. teachers    four experts, each trained on all pairs of its modalities (open_clip folders and
                 one transformers CLIPModel), plus a weak generalist on 10 % of everything
  3. stage 1     the student's CLIP pretraining on its pairs (and the untrained student, its floor)
  4. extract     every teacher encodes the student's pairs into a feature store (+ availability)
  5. align       the alignment autoencoder (teachers -> student space)
  6. stage 2     distillation (default `decision-gated+projection-modality`: for the modalities
                 where an expert beats the stage-1 student, its zero-shot decisions on the
                 image-only images and its aligned features on the pairs) and the control:
                 the same steps, CLIP loss only; `self-distill` (the stage-1 student as the only
                 teacher, every term on), `self-label`, `NAME:caption-vocab` and
                 `NAME:caption-vocab-no-names` are controls (docs/DISTILLATION.md)
  7. evaluate    every model on zero-shot, linear probe, retrieval, VQA, MIL classification and
                 survival, on the --eval-split sets; then `mmkd report`

Validation first, test once. The default evaluates on the validation sets; with several student
seeds it writes selection.json: the chosen variant, the tasks of `overall` and every other choice
of the test run, with a hash. The test sets are evaluated only with that file (--selection FILE):
the run takes every choice from it, refuses a changed file, and writes its hash into every output.

Prints a table (per-task means over datasets; `overall` averages the tasks that separate trained
from untrained models, frozen on validation for the test run; the all-task mean beside it) and
writes comparison[-val].md/.json: paired differences to the control per run, their mean with a
95 % CI (over corpus means when there are several --corpus-seeds), and wins. Rerunning on the same
--out reuses every finished step whose code and inputs are unchanged (a copied folder too).

examples:
  mmkd demo                          # about 10 minutes on 2 CPU cores; validation sets, results in runs/demo
  mmkd demo --quick --out /tmp/demo  # a small version (a couple of minutes), as the tests run it
  mmkd demo --eval-split val --student-seeds 0,1,2 --stage2 projection,decision-gated --out runs/e
  mmkd demo --eval-split test --selection runs/e/selection.json --out runs/e
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmkd.demo.recipe import STAGE2_VARIANTS

    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="folder for everything the demo writes; rerun on it to reuse finished steps "
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small version that runs in a couple of minutes")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, splits and training (default: 0)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="steps run at the same time, each in its own process (default: 2, for 2 cores)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per step (default: CPU cores / jobs, at least 1)")
    parser.add_argument("--student-seeds", default="", metavar="SEEDS",
                        help="comma-separated seeds: run stage 1, the control and stage 2 once per seed (same data "
                             "and teachers) and show mean ± sd over them (default: --seed only; the test run takes "
                             "them from --selection)")
    parser.add_argument("--corpus-seeds", default="", metavar="SEEDS",
                        help="comma-separated corpus-and-teacher seeds: a fresh draw of both corpora and freshly "
                             "trained teachers per seed, each in DIR/corpus-SEED, every student seed on each "
                             "(default: --seed only; the test run takes them from --selection)")
    parser.add_argument("--eval-split", default="val", choices=("val", "test"),
                        help="evaluate on the validation sets (to choose a stage-2 variant and its settings) or the "
                             "test sets (the reported comparison; needs --selection) (default: %(default)s)")
    parser.add_argument("--selection", default="", metavar="FILE",
                        help="the test run's frozen choices: the selection.json a validation run wrote "
                             "(required with --eval-split test)")
    parser.add_argument("--stage2", default="", metavar="VARIANTS",
                        help="comma-separated stage-2 variants to run beside the control: "
                             f"{', '.join(v for v in STAGE2_VARIANTS if v != 'control')}; a decision variant with "
                             ":caption-vocab uses the training captions as its vocabulary, with "
                             ":caption-vocab-no-names those that name no class (default: "
                             "decision-gated+projection-modality; the test run takes them from --selection)")


def _seeds(option: str, text: str) -> tuple[int, ...]:
    from mmkd.errors import UsageError

    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a comma-separated list of integers") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"{option}: {text!r} must be distinct seeds >= 0")
    return seeds


def frozen_choices(args: argparse.Namespace) -> dict[str, Any] | None:
    """The selection file of a test run (checked), or None for a validation run; refuses a test run without
    one and any option that would override a frozen choice."""
    from mmkd.demo.protocol import read_selection
    from mmkd.errors import UsageError

    if args.eval_split != "test":
        if args.selection:
            raise UsageError("--selection: only the test run (--eval-split test) takes a selection file; the "
                             "validation run writes one")
        return None
    if not args.selection:
        raise UsageError("--eval-split test: the test sets are evaluated only with the choices frozen on the "
                         "validation sets; give --selection DIR/selection.json as the validation run "
                         "(mmkd demo --eval-split val --student-seeds 0,1,2 --out DIR) wrote it")
    doc = read_selection(args.selection, args.quick)
    for option, value in (("--stage2", args.stage2), ("--student-seeds", args.student_seeds),
                          ("--corpus-seeds", args.corpus_seeds)):
        if value:
            raise UsageError(f"{option}: {value!r} would override a choice frozen in {args.selection}; the test run "
                             f"takes it from there (drop {option})")
    p = doc["protocol"]
    if p["test_data_seed"] in (*p["used_data_seeds"], *p["test_corpus_seeds"]):
        raise UsageError(f"--selection: {args.selection}: test_data_seed {p['test_data_seed']} made test sets an "
                         f"earlier run has seen; make a new selection")
    return doc


def run(args: argparse.Namespace) -> int:
    from mmkd.demo.jobs import Runner, check_out_dir, code_version
    from mmkd.demo.recipe import make_recipe
    from mmkd.demo.table import format_table, results, verdict
    from mmkd.errors import UsageError
    from mmkd.utils.io import atomic_write_json

    if args.jobs < 1:
        raise UsageError(f"--jobs: {args.jobs} must be at least 1")
    if args.seed < 0:
        raise UsageError(f"--seed: {args.seed} is negative; use a seed >= 0")
    selection = frozen_choices(args)
    if selection is None:
        variants = tuple(v.strip() for v in args.stage2.split(",") if v.strip()) or None
        student_seeds = _seeds("--student-seeds", args.student_seeds)
        corpus_seeds = _seeds("--corpus-seeds", args.corpus_seeds) or (args.seed,)
        test_data_seed, frozen_tasks = None, None
    else:
        p = selection["protocol"]
        variants = (p["variant"], *p["controls"])
        student_seeds, corpus_seeds = tuple(p["test_student_seeds"]), tuple(p["test_corpus_seeds"])
        test_data_seed, frozen_tasks = p["test_data_seed"], tuple(p["overall_tasks"])
    recipes = {c: make_recipe(quick=args.quick, seed=c, variants=variants, student_seeds=student_seeds,
                              eval_split=args.eval_split, test_data_seed=test_data_seed) for c in corpus_seeds}
    recipe = recipes[corpus_seeds[0]]
    root = Path(args.out)
    check_out_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"selection_file": str(args.selection), "selection_hash": selection["hash"]} if selection else {}
    atomic_write_json(root / "recipe.json", {**recipe.to_json(), "corpus_seeds": list(corpus_seeds), **stamp})
    started = time.perf_counter()
    print(f"mmkd demo{' --quick' if recipe.quick else ''}: writing to {root.resolve()} "
          f"(evaluation on the {recipe.eval_split} sets)")
    if selection:
        print(f"frozen choices: {args.selection} (hash {selection['hash'][:16]}): {', '.join(variants or ())}; "
              f"overall = {', '.join(frozen_tasks or ()) or 'no task'}")

    from mmkd.demo.data import prepare

    _preimport()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    corpora = []
    reused = 0
    for c, r in recipes.items():
        croot = root if len(recipes) == 1 else root / f"corpus-{c}"
        print(f"[1/7] data{'' if len(recipes) == 1 else f' (corpus seed {c})'}: synthetic corpus + real-mini "
              f"images, student / teacher / image-only tables")
        info = prepare(croot / "data", r)
        _print_counts(info)
        runner = Runner(croot, jobs=args.jobs, threads=threads)
        plan = _plan(runner, r, info, croot)
        print(f"[2-7/7] {len(runner.steps)} steps, {args.jobs} at a time ({threads} thread(s) each); logs in "
              f"{croot / 'logs'}")
        runner.run()
        reused += runner.reused
        corpora.append((c, runner, plan, info))
    plan = {"seeds": corpora[0][2]["seeds"], "corpus_seeds": list(corpus_seeds), "reused": reused}
    rows = results([(c, runner, p) for c, runner, p, _ in corpora], tasks=frozen_tasks)
    table = format_table(rows, plan)
    suffix = "" if recipe.eval_split == "test" else f"-{recipe.eval_split}"
    header = (f"Frozen choices: {args.selection}, hash {selection['hash']}.\n\n" if selection else "")
    atomic_write_json(root / f"results{suffix}.json", {"rows": rows, "recipe": recipe.to_json(),
                                                       "corpus_seeds": list(corpus_seeds), **stamp,
                                                       "minutes": round((time.perf_counter() - started) / 60, 2)})
    (root / f"results{suffix}.md").write_text(header + table + "\n")
    written = _write_comparison(root, rows, recipe, args, plan, corpora, selection, code_version(),
                                round((time.perf_counter() - started) / 60, 1))
    print()
    print(table)
    print()
    for line in verdict(rows, plan):
        print(line)
    report = corpora[0][1].steps[corpora[0][2]["report_step"]].result or {}
    print()
    print(f"report: {report.get('markdown')}  (tables{'' if len(corpora) == 1 else ', first corpus seed'})")
    print(f"        {report.get('html')}  (one page with plots)")
    print(f"        plots in {Path(report.get('html', root)).parent / 'plots'}")
    print(f"table:  {root / f'results{suffix}.md'}; per-result JSON in {root / ('eval' + suffix)}")
    print(f"comparison (paired differences to the control, 95 % CIs): {', '.join(str(w) for w in written)}")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    from mmkd.utils.console import Summary

    closing = Summary("demo")
    closing.started = started
    closing.add("folder", root.resolve())
    closing.add("steps", f"{sum(len(runner.steps) for _, runner, _, _ in corpora)} (logs in {root / 'logs'})")
    closing.add("table", root / f"results{suffix}.md")
    closing.add("report", report.get("html"))
    closing.emit()
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The `mmkd demo` command that reproduces this run (the options that change what it computes)."""
    parts = ["mmkd demo"]
    if args.quick:
        parts.append("--quick")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    parts.append(f"--eval-split {args.eval_split}")
    for option, value in (("--selection", args.selection), ("--corpus-seeds", args.corpus_seeds),
                          ("--student-seeds", args.student_seeds), ("--stage2", args.stage2)):
        if value:
            parts.append(f"{option} {value}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def test_sets(corpora, selection: dict[str, Any] | None) -> dict[str, str]:
    """dataset -> whether its test images are new to every choice: the synthetic sets of a data seed no run
    used before are; the real sets (the shipped test splits, evaluated by every earlier run) are seen before."""
    import yaml

    info = corpora[0][3]
    catalog = yaml.safe_load(Path(info["paths"]["catalog"]).read_text())["datasets"]
    used = set(selection["protocol"]["used_data_seeds"]) if selection else set()
    seed = info.get("test_data_seed")
    out = {}
    for name in catalog:
        if name.startswith("synth-") and selection and seed not in used:
            out[name] = f"unseen (synthetic, data seed {seed}, never used before)"
        elif name.startswith("synth-"):
            out[name] = f"seen before (synthetic, data seed {seed})"
        else:
            out[name] = "seen before (the shipped test split, evaluated by earlier runs)"
    return out


def _write_comparison(root: Path, rows, recipe, args, plan, corpora, selection, code: str,
                      minutes: float) -> list[Path]:
    """comparison[-val].md/.json; on validation also selection.json (the frozen choices of the test run)."""
    import datetime

    from mmkd.demo.compare import comparison_json, comparison_markdown, select
    from mmkd.demo.protocol import make_protocol, selection_document
    from mmkd.demo.recipe import (SELECTION_CANDIDATES, SELECTION_SEEDS, TEST_CORPUS_SEEDS, TEST_DATA_SEED,
                                  TEST_STUDENT_SEEDS, USED_DATA_SEEDS)
    from mmkd.utils.io import atomic_write_json, atomic_write_text

    suffix = "" if recipe.eval_split == "test" else f"-{recipe.eval_split}"
    p = selection["protocol"] if selection else {}
    meta = {"command": command_line(args), "date": datetime.date.today().isoformat(), "code_version": code,
            "split": recipe.eval_split,
            "split_name": "test sets (catalog.yaml)" if recipe.eval_split == "test"
            else "validation sets (catalog-val.yaml)",
            "seeds": plan["seeds"], "corpus_seeds": plan["corpus_seeds"],
            "selection_seeds": p.get("selection_student_seeds", list(SELECTION_SEEDS)), "data_seed": recipe.seed,
            "minutes": minutes, "reused_steps": plan.get("reused", 0)}
    if selection:
        meta.update(selection_file=str(args.selection), selection_hash=selection["hash"], frozen_tasks=p["overall_tasks"],
                    test_data_seed=p["test_data_seed"], test_sets=test_sets(corpora, selection))
    written = [root / f"comparison{suffix}.md", root / f"comparison{suffix}.json"]
    doc = None
    if recipe.eval_split == "val" and len(plan["seeds"]) > 1:
        chosen = select(rows, SELECTION_CANDIDATES)
        if chosen["chosen"]:
            fresh = tuple(s + 100 for s in TEST_STUDENT_SEEDS) if set(TEST_STUDENT_SEEDS) & set(plan["seeds"]) \
                else TEST_STUDENT_SEEDS
            corpus = tuple(s + 100 for s in TEST_CORPUS_SEEDS) if set(TEST_CORPUS_SEEDS) & set(plan["corpus_seeds"]) \
                else TEST_CORPUS_SEEDS
            used = {*USED_DATA_SEEDS, *plan["corpus_seeds"], *corpus}
            protocol = make_protocol(chosen["chosen"], rows, recipe, plan["corpus_seeds"], fresh, corpus,
                                     TEST_DATA_SEED if TEST_DATA_SEED not in used else max(used) + 1)
            protocol["selection_student_seeds"] = plan["seeds"]
            doc = selection_document(protocol, chosen["ranking"], list(SELECTION_CANDIDATES), meta["command"], code)
            meta.update(wrote_selection=str(root / "selection.json"), wrote_selection_hash=doc["hash"])
    atomic_write_text(written[0], comparison_markdown(rows, meta))
    atomic_write_json(written[1], comparison_json(rows, meta))
    if doc is not None:
        written.append(root / "selection.json")
        atomic_write_json(written[-1], doc)
        print(f"chosen on validation: {doc['protocol']['variant']} (mean paired difference to the control "
              f"{doc['ranking'][0]['mean']:+.3f}); frozen in {written[-1]} (hash {doc['hash'][:16]}); "
              f"the test run: mmkd demo --eval-split test --selection {written[-1]}"
              f"{' --quick' if recipe.quick else ''} --out {args.out}")
    return written


def _preimport() -> None:
    """Import what the steps use once here, so forked steps start without importing anything."""
    import open_clip  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import CLIPModel  # noqa: F401

    import mmkd.evaluation.linear_probe  # noqa: F401
    import mmkd.evaluation.mil  # noqa: F401
    import mmkd.evaluation.retrieval  # noqa: F401
    import mmkd.evaluation.survival  # noqa: F401
    import mmkd.evaluation.vqa  # noqa: F401
    import mmkd.evaluation.zero_shot  # noqa: F401
    import mmkd.training.loop  # noqa: F401
    import mmkd.training.stage2  # noqa: F401


def _print_counts(info: dict[str, Any]) -> None:
    counts = info["counts"]
    for name in ("all_pairs", "student_pairs", "image_only"):
        c = counts[name]
        print(f"  {name:<22} {sum(c.values()):>6}  " + ", ".join(f"{m} {n}" for m, n in c.items()))
    for name, c in counts.items():
        if name.startswith("teacher-"):
            print(f"  {name:<22} {sum(c.values()):>6}  " + ", ".join(f"{m} {n}" for m, n in c.items()))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


GATE_NAME = {"": "", ":caption-vocab": "-captions", ":caption-vocab-no-names": "-no-names"}
VOCAB_PATH = {"": "decision_vocab", ":caption-vocab": "decision_vocab_captions",
              ":caption-vocab-no-names": "decision_vocab_captions_no_names"}


def _plan(runner, recipe, info: dict[str, Any], root: Path) -> dict[str, Any]:
    """Add every step to the runner; returns the models to evaluate (name -> display label, kind)."""
    from mmkd.demo.jobs import Step
    from mmkd.demo.recipe import (NO_NAMES_VOCAB, SELF_DISTILL, STAGE2_VARIANTS, base_variant, is_gated,
                                  needs_alignment, needs_image_only, needs_routes, vocab_suffix)
    from mmkd.demo.steps import SELF_TEACHER

    paths, counts = info["paths"], info["counts"]
    data_salt = _hash(counts)
    abs_ = lambda p: str(Path(p).resolve())  # noqa: E731
    models: dict[str, dict[str, Any]] = {}
    specs: dict[str, str] = {}
    for t in recipe.teachers:
        export_dir = abs_(root / "teachers" / t.name)
        specs[t.name] = f"{'hf' if t.kind == 'hf' else 'local-dir'}:{export_dir}"
        pairs = paths[f"teacher-{t.name}"]
        prompts = [p for m in t.modalities for p in info["class_prompts"].get(m, [])]
        num = sum(counts[f"teacher-{t.name}"].values())
        runner.add(Step(f"teacher-{t.name}", "mmkd.demo.steps:teacher", dict(
            kind=t.kind, pairs_csv=abs_(pairs), run_dir=abs_(root / "runs" / f"teacher-{t.name}"),
            export_dir=export_dir, model=t.model, epochs=t.epochs, lr=t.lr,
            batch_size=recipe.teacher_batch_size, seed=recipe.seed, prompts=prompts),
            clean=(str(root / "runs" / f"teacher-{t.name}"), str(root / "teachers" / t.name)),
            weight=num * t.epochs / 1000, salt=data_salt))
        what = ", ".join(t.modalities) if t.modalities else f"{t.fraction:.0%} of every modality"
        models[t.name] = {"label": f"teacher {t.name} ({what})", "kind": "teacher", "step": f"teacher-{t.name}",
                          "spec": specs[t.name], "group": t.name}
    student_pairs = abs_(paths["student_pairs"])
    num_student = sum(counts["student_pairs"].values())
    store = abs_(root / "store")
    teacher_steps = tuple(f"teacher-{t.name}" for t in recipe.teachers)
    runner.add(Step("extract", "mmkd.demo.steps:extract", dict(
        pairs_csv=student_pairs, teachers=specs, store=store),
        deps=teacher_steps, clean=(store,), weight=num_student * len(recipe.teachers) / 2000, salt=data_salt))
    runner.add(Step("align", "mmkd.demo.steps:align", dict(store=store, latent_dim=64, steps=300 if not recipe.quick
                                                            else 50, seed=recipe.seed), deps=("extract",), weight=0.3))
    # The live teachers' specs are passed explicitly (not read from the store), so a moved folder still works.
    decision = {"data.image_only_path": abs_(paths["image_only"]), "distill.decision_vocab": abs_(paths["decision_vocab"]),
                "distill.modality_routes": recipe.routes(), "distill.decision_temperature": recipe.decision_temperature,
                "distill.decision_teachers": specs}
    seeds = recipe.student_seeds or (recipe.seed,)
    for seed in seeds:  # the student's part of the pipeline, once per student seed
        sfx = "" if len(seeds) == 1 else f"-s{seed}"
        untrained_dir = abs_(root / "runs" / f"student-untrained{sfx}")
        runner.add(Step(f"untrained{sfx}", "mmkd.demo.steps:untrained", dict(
            run_dir=untrained_dir, model=recipe.student_model, seed=seed), clean=(untrained_dir,), weight=0.05))
        models[f"student-untrained{sfx}"] = {"label": "student, untrained (random initialisation)", "kind": "untrained",
                                             "step": f"untrained{sfx}", "spec": untrained_dir,
                                             "group": "student-untrained"}
        s1 = abs_(root / "runs" / f"student-stage1{sfx}")
        runner.add(Step(f"stage1{sfx}", "mmkd.demo.steps:stage1", dict(
            pairs_csv=student_pairs, run_dir=s1, model=recipe.student_model, epochs=recipe.stage1_epochs,
            lr=recipe.stage1_lr, batch_size=recipe.batch_size, seed=seed),
            clean=(s1,), weight=num_student * recipe.stage1_epochs / 1000, salt=data_salt))
        models[f"student-stage1{sfx}"] = {"label": "student after stage 1 (CLIP loss)", "kind": "student",
                                          "step": f"stage1{sfx}", "spec": s1, "group": "student-stage1"}
        shared = dict(pairs_csv=student_pairs, store=store, init=s1, steps=recipe.stage2_steps, lr=recipe.stage2_lr,
                      batch_size=recipe.batch_size, seed=seed)
        # The gate classifies with the variant's own vocabulary: the caption-vocabulary controls never
        # touch the evaluation's class prompts, not even to choose their experts.
        gates = {}
        for words in dict.fromkeys(vocab_suffix(v) for v in recipe.stage2_variants if is_gated(v)):
            name = f"expert-gate{GATE_NAME[words]}{sfx}"
            gates[words] = (name, abs_(root / "runs" / f"{name}.json"))
            runner.add(Step(name, "mmkd.demo.steps:gate_experts", dict(
                pairs_csv=student_pairs, vocab=abs_(paths[VOCAB_PATH[words]]),
                teachers=specs, experts={t.name: list(t.modalities) for t in recipe.teachers if t.modalities},
                student=s1, out=gates[words][1]), deps=teacher_steps + (f"stage1{sfx}",), clean=(gates[words][1],),
                weight=0.5))
        if SELF_DISTILL in recipe.stage2_variants:  # the stage-1 student's own features, extracted and aligned
            self_store = abs_(root / f"store-self{sfx}")
            runner.add(Step(f"extract-self{sfx}", "mmkd.demo.steps:extract", dict(
                pairs_csv=student_pairs, teachers={}, store=self_store, students={SELF_TEACHER: s1}),
                deps=(f"stage1{sfx}",), clean=(self_store,), weight=num_student / 2000, salt=data_salt))
            runner.add(Step(f"align-self{sfx}", "mmkd.demo.steps:align", dict(
                store=self_store, latent_dim=64, steps=300 if not recipe.quick else 50, seed=recipe.seed),
                deps=(f"extract-self{sfx}",), weight=0.3))
        for variant in ("control", *recipe.stage2_variants):
            overrides = dict(STAGE2_VARIANTS[base_variant(variant)])
            if needs_image_only(variant):
                overrides.update(decision)
                if vocab_suffix(variant):
                    overrides["distill.decision_vocab"] = abs_(paths[VOCAB_PATH[vocab_suffix(variant)]])
                if vocab_suffix(variant) == NO_NAMES_VOCAB:
                    overrides["data.image_only_path"] = abs_(paths["image_only_no_names"])
            if needs_routes(variant):
                overrides["distill.modality_routes"] = recipe.routes()
            group = "student-control" if variant == "control" else f"student-stage2-{variant}"
            step = group.replace("student-", "") + sfx
            run_dir = abs_(root / "runs" / f"{group}{sfx}")
            deps = (f"stage1{sfx}", "extract") + (("align",) if needs_alignment(variant) else ())
            kwargs = dict(shared, run_dir=run_dir, overrides=overrides)
            if is_gated(variant):
                gate, kwargs["routes_file"] = gates[vocab_suffix(variant)]
                deps += (gate,)
            if base_variant(variant) in ("self-label", SELF_DISTILL):
                kwargs["self_label"] = True
            if variant == SELF_DISTILL:
                kwargs["store"] = abs_(root / f"store-self{sfx}")
                deps += (f"extract-self{sfx}", f"align-self{sfx}")
            runner.add(Step(step, "mmkd.demo.steps:stage2", kwargs,
                            deps=deps, clean=(run_dir,),
                            weight=recipe.stage2_steps * recipe.batch_size / 1000
                            * (1.6 if needs_image_only(variant) else 1)))
            label = ("control: stage 1 + the same steps, CLIP loss only" if variant == "control"
                     else "self-distillation: the stage-1 student as the only teacher, every term"
                     if variant == SELF_DISTILL else f"student after stage 2 ({variant})")
            kind = "control" if variant == "control" else "stage2"
            models[f"{group}{sfx}"] = {"label": label, "kind": kind, "step": step, "spec": run_dir, "group": group,
                                       "variant": variant}
    # Validation and test results live side by side: the selection and the reported run share a folder.
    tag = "" if recipe.eval_split == "test" else f"{recipe.eval_split}-"
    eval_dir = abs_(root / f"eval{'' if not tag else '-' + recipe.eval_split}")
    catalog = abs_(paths["catalog"] if recipe.eval_split == "test" else paths["catalog_val"])
    for name, m in models.items():
        m["eval_step"] = f"eval-{tag}{name}"
        runner.add(Step(m["eval_step"], "mmkd.demo.steps:evaluate", dict(
            spec=m["spec"], name=name, catalog=catalog, out_dir=eval_dir, seed=recipe.seed,
            num_bootstrap=recipe.num_bootstrap, only=list(recipe.eval_only)), deps=(m["step"],), weight=1.5,
            salt=data_salt))
    report_dir = abs_(root / f"report{'' if not tag else '-' + recipe.eval_split}")
    runner.add(Step(f"report{'' if not tag else '-' + recipe.eval_split}", "mmkd.demo.steps:report",
                    dict(eval_dir=eval_dir, out=report_dir), deps=tuple(m["eval_step"] for m in models.values()),
                    weight=0.5))
    return {"models": models, "report_step": f"report{'' if not tag else '-' + recipe.eval_split}",
            "eval_split": recipe.eval_split, "seeds": list(seeds)}
