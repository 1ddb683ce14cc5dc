"""The demo's steps as plain functions of JSON-able arguments (run by `mmkd.demo.jobs.Runner`).

Each calls the library the way a user would: the stage-1 loop, `mmkd extract` / `mmkd align`
through the command line's own `main`, the stage-2 loop, the evaluation runner. Each returns a
small JSON-able result that the runner stores in the step's done-marker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mmkd.demo.recipe import TRAIN_AUGMENT
from mmkd.evaluation.report_table import HEADLINE_METRIC

# Headline metric per task for the demo's table (the report's): one number per (model, dataset, task).
TASK_METRIC = HEADLINE_METRIC
TASKS = tuple(TASK_METRIC)


def _fit(tokens: list[str], task: str) -> dict[str, Any]:
    from mmkd.config import build_config
    from mmkd.training.loop import fit

    # A step that runs again (its done-marker is missing) starts its run over: --overwrite.
    common = ["--train.progress", "false", "--train.keep_checkpoints", "1", "--train.log_every", "10",
              "--train.overwrite", "true", "--data.augment", TRAIN_AUGMENT]
    if task == "pretrain":
        from mmkd.training.stage1 import ClipTask

        summary = fit(build_config(None, tokens + common, stage="pretrain"), ClipTask)
    else:
        from mmkd.training.stage2 import DistillTask

        summary = fit(build_config(None, tokens + common, stage="distill"), DistillTask)
    if not summary.get("completed"):
        raise RuntimeError(f"training stopped before the end: {summary}")
    return {k: summary.get(k) for k in ("num_steps", "final_loss", "final_terms", "samples_per_s", "wall_s")}


def teacher(kind: str, pairs_csv: str, run_dir: str, export_dir: str, model: str, epochs: int, lr: float,
            batch_size: int, seed: int, prompts: list[str]) -> dict[str, Any]:
    """Train one expert teacher and save it in its real format; returns {"spec", "summary"}."""
    from mmkd.demo.teachers import train_hf_teacher, train_open_clip_teacher

    if kind == "hf":
        return train_hf_teacher(pairs_csv, export_dir, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                extra_texts=prompts)
    return train_open_clip_teacher(pairs_csv, run_dir, export_dir, model, epochs, lr, batch_size, seed)


def stage1(pairs_csv: str, run_dir: str, model: str, epochs: int, lr: float, batch_size: int,
           seed: int) -> dict[str, Any]:
    """Stage 1: CLIP pretraining of the student on its captioned pairs."""
    return _fit(["--data", pairs_csv, "--model", model, "--out", run_dir, "--epochs", str(epochs),
                 "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
                 "--optim.warmup_steps", "20", "--optim.weight_decay", "0.1"], "pretrain")


def untrained(run_dir: str, model: str, seed: int) -> dict[str, Any]:
    """The student as initialised before any training (seeded), saved as a run: the demo's floor."""
    import shutil

    from mmkd.models.student import create_student
    from mmkd.training.checkpoint import save_checkpoint

    shutil.rmtree(run_dir, ignore_errors=True)
    student = create_student(model, seed=seed)
    ckpt = save_checkpoint(run_dir, 0, student.model, student.open_clip_config(), None, {"untrained": True})
    return {"checkpoint": Path(ckpt).name}


def extract(pairs_csv: str, teachers: dict[str, str], store: str,
            students: dict[str, str] | None = None) -> dict[str, Any]:
    """`mmkd extract`: every teacher encodes the student's pairs; availability by the rank rule.

    `students`: name -> a student's run folder, extracted as a teacher from its latest checkpoint
    (the self-distillation control's only teacher)."""
    from mmkd.cli import main
    from mmkd.data.feature_store import FeatureStore
    from mmkd.utils.runs import latest_checkpoint

    args = ["extract", "--data", pairs_csv, "--out", store, "--availability", "rank", "--candidates", "10",
            "--no-progress"]
    teachers = {**teachers, **{name: f"local-dir:{latest_checkpoint(run)}" for name, run in (students or {}).items()}}
    for name, spec in teachers.items():
        args += ["--teacher", f"{name}={spec}"]
    code = main(args)
    if code:
        raise RuntimeError(f"mmkd extract exited with {code}")
    fs = FeatureStore(store)
    avail = fs.available
    return {"teachers": fs.teachers, "available_fraction": {t: round(float(avail[:, j].mean()), 4)
                                                            for j, t in enumerate(fs.teachers)}}


def align(store: str, latent_dim: int, steps: int, seed: int) -> dict[str, Any]:
    """`mmkd align`: the alignment autoencoder that maps every teacher into the student's space."""
    from mmkd.cli import main

    code = main(["align", "--store", store, "--latent-dim", str(latent_dim), "--steps", str(steps),
                 "--seed", str(seed)])
    if code:
        raise RuntimeError(f"mmkd align exited with {code}")
    report = json.loads((Path(store) / "alignment.json").read_text()) if (Path(store) / "alignment.json").is_file() \
        else {}
    return {"mean_pair_cosine": report.get("mean_pair_cosine")}


SELF_TEACHER = "student-self"


def stage2(pairs_csv: str, store: str, init: str, run_dir: str, steps: int, lr: float, batch_size: int, seed: int,
           overrides: dict[str, Any], routes_file: str = "", self_label: bool = False) -> dict[str, Any]:
    """Stage 2 (or its control): `steps` optimiser steps from the stage-1 student, the given distill options.

    `routes_file`: a `gate_experts` result whose routes become `distill.modality_routes`.
    `self_label`: the stage-1 student itself (`init`'s last checkpoint) replaces the experts: it labels the
    image-only images of every modality the routes give an expert to, and, with a `store` of its own
    features (the `self-distill` control), is the only teacher of the feature terms too."""
    from mmkd.data.pairs import index_source
    from mmkd.utils.runs import latest_checkpoint

    if routes_file:
        routes = json.loads(Path(routes_file).read_text())["routes"]
        if self_label:
            routes = {m: [SELF_TEACHER] if experts else [] for m, experts in routes.items()}
            teachers = {**overrides.get("distill.decision_teachers", {}),
                        SELF_TEACHER: f"local-dir:{latest_checkpoint(init)}"}
            overrides = {**overrides, "distill.decision_teachers": teachers}
        overrides = {**overrides, "distill.modality_routes": routes}
    num_pairs = len(index_source(pairs_csv)[0])
    epochs = max(1, math.ceil(steps / max(1, num_pairs // batch_size)))
    tokens = ["--data", pairs_csv, "--store", store, "--init", init, "--out", run_dir, "--epochs", str(epochs),
              "--max-steps", str(steps), "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
              "--optim.warmup_steps", "10", "--optim.weight_decay", "0.1"]
    for key, value in overrides.items():
        tokens += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return _fit(tokens, "distill")


def evaluate(spec: str, name: str, catalog: str, out_dir: str, seed: int, num_bootstrap: int,
             only: list[str] | None = None) -> dict[str, Any]:
    """Evaluate one model on every dataset and task of the catalog; returns its headline numbers."""
    import warnings

    from mmkd import load_model
    from mmkd.evaluation.runner import evaluate as run_eval

    model = load_model(spec, name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = run_eval(model, catalog, TASKS, out_dir, seed=seed, num_bootstrap=num_bootstrap, model_name=name,
                           cache_dir=Path(out_dir) / ".feature_cache", only=only or None)
    return {"scores": headline_scores(records), "chance": chance_scores(records)}


def chance_scores(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """task -> dataset -> the headline number of a model that knows nothing (guesses, or ties everything).

    Classification: 1/C balanced accuracy; retrieval: recall@5 with every similarity equal (mean of
    both directions, `mmkd.evaluation.metrics.retrieval_metrics` on a constant matrix); VQA: the
    image-blind answer (the most frequent training answer to the same question text); MIL AUROC and
    survival c-index: 0.5.
    """
    from math import comb

    out: dict[str, dict[str, float]] = {}
    for r in records:
        task, details = r["task"], r.get("details") or {}
        if task in ("zero-shot", "linear-probe") and details.get("classnames"):
            value = 1.0 / len(details["classnames"])
        elif task == "retrieval" and details.get("num_images"):
            num_i, num_m = int(details["num_images"]), int(details["num_captions"])
            per_image = max(1, round(num_m / num_i))
            t2i = min(1.0, 5 / num_i)
            i2t = 1.0 - comb(num_m - per_image, 5) / comb(num_m, 5) if num_m >= 5 else 1.0
            value = (t2i + i2t) / 2
        elif task == "vqa" and r["metrics"].get("majority_accuracy") is not None:
            value = float(r["metrics"].get("question_only_accuracy", r["metrics"]["majority_accuracy"]))
        elif task in ("mil-classification", "survival"):
            value = 0.5
        else:
            continue
        out.setdefault(task, {})[r["dataset"]] = float(value)
    return out


def headline_scores(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """task -> dataset -> the task's headline number (see TASK_METRIC)."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        names = TASK_METRIC.get(r["task"])
        if not names:
            continue
        values = [r["metrics"].get(m) for m in names]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            out.setdefault(r["task"], {})[r["dataset"]] = float(sum(values) / len(values))
    return out


def summarise(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-task means over datasets, and `overall`: the mean of the per-task means."""
    row = {t: float(sum(v.values()) / len(v)) for t, v in scores.items() if v}
    present = [row[t] for t in TASKS if t in row]
    row["overall"] = float(sum(present) / len(present)) if present else float("nan")
    return row


def report(eval_dir: str, out: str) -> dict[str, Any]:
    """`mmkd report`: tables, plots and the HTML page of every evaluation result."""
    from mmkd.evaluation.report import write_report

    written = write_report(eval_dir, out)
    return {k: (str(v) if not isinstance(v, list) else [str(x) for x in v]) for k, v in written.items()}


def gate_experts(pairs_csv: str, vocab: str, teachers: dict[str, str], experts: dict[str, list[str]], student: str,
                 out: str) -> dict[str, Any]:
    """Decide which expert may label which modality for decision distillation.

    Every expert and the stage-1 student classify the student's own captioned pairs zero-shot
    (the class texts of the decision vocabulary `vocab`; the pairs' labels are known to the student). An
    expert labels a modality's image-only images only if its balanced accuracy there beats the
    student's: an expert that is no better than the student teaches it noise (measured: the
    radiology expert, at chance on CT, pulled the student's CT zero-shot down). Writes `out`
    (JSON: routes modality -> [teachers], accuracy model -> modality -> balanced accuracy).
    """
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score

    from mmkd import load_model
    from mmkd.data.pairs import decode_image
    from mmkd.evaluation.encode import encode_images
    from mmkd.evaluation.zero_shot import zero_shot_probs
    from mmkd.training.decision import class_embeddings_of, load_vocab
    from mmkd.utils.io import atomic_write_json

    class _Pil:
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def load(self, i):
            return self.items[i].convert("RGB")

    table = Path(pairs_csv)
    pairs = pd.read_csv(table, keep_default_na=False)
    vocabulary = load_vocab(vocab)
    every = sorted({m for ms in experts.values() for m in ms})
    modalities = [m for m in every if m in vocabulary]  # a vocabulary may leave modalities out
    accuracy: dict[str, dict[str, float]] = {}
    for name, spec in {**teachers, "student": student}.items():
        model = load_model(spec, name=name)
        wanted = modalities if name == "student" else [m for m in experts.get(name, []) if m in vocabulary]
        accuracy[name] = {}
        for m in wanted:
            rows = pairs[pairs["modality"] == m]
            names = vocabulary[m]["classnames"]
            images = [decode_image(str(table.parent / p), 64_000_000) for p in rows["image"]]
            probs = zero_shot_probs(encode_images(model, _Pil(images), 128), class_embeddings_of(model, vocabulary[m]))
            predicted = probs.argmax(1).numpy()
            truth = [names.index(label) for label in rows["label"]]
            accuracy[name][m] = round(float(balanced_accuracy_score(truth, predicted)), 4)
    routes = {m: [t for t, ms in experts.items() if m in modalities and m in ms
                  and accuracy[t][m] > accuracy["student"][m]] for m in every}
    atomic_write_json(out, {"routes": routes, "accuracy": accuracy})
    return {"routes": routes, "accuracy": accuracy}
