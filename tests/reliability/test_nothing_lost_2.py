"""Nothing lost, part two: results filed under the wrong model, folders two commands write at once,
finished runs rewritten by a requeue, inputs that change under a run, and init files taken silently.

One test per case; each failed before the change that made it pass. Commands run in-process through
`mmkd.cli.main`; concurrent commands and a run still training are real forked processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from mmkd.cli import main
from rel_helpers import (clean_refusal, cli, fork, latest_step, snapshot, stage1_args, stage2_args, training_world,
                         wait_until)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


def strict_json(path: Path):
    """The file parsed as JSON proper: a bare NaN or Infinity is an error, as in every other JSON reader."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _cli_in_child(argv: list[str], err_file: str) -> None:
    sys.stderr = open(err_file, "w", buffering=1)
    sys.exit(main(argv))


EVAL = ["--datasets", "real_mini", "--tasks", "zero-shot", "--num-bootstrap", "0", "--only"]


def _zero_shot_set() -> str:
    from mmkd.evaluation.runner import load_catalog

    return next(e.name for e in load_catalog("real_mini") if "zero-shot" in e.tasks)


# ---- case 2: two evals into one name at once ------------------------------------------------

def test_two_evals_filing_under_one_name_at_once_one_is_refused(world, tmp_path):
    root, _, _ = world
    out = tmp_path / "EV"
    procs = []
    for i, model in enumerate((root / "ref1", root / "ref2")):
        argv = ["eval", "--model", str(model), "--name", "m", "--out", str(out), *EVAL, _zero_shot_set()]
        procs.append(fork(_cli_in_child, argv, str(tmp_path / f"err{i}.txt")))
    for p in procs:
        p.join(timeout=300)
    errs = [(tmp_path / f"err{i}.txt").read_text() for i in range(2)]
    assert sorted(p.exitcode for p in procs) == [0, 2], ([p.exitcode for p in procs], errs)
    loser = errs[[p.exitcode for p in procs].index(2)]
    assert "--name" in loser or "being written" in loser, loser
    assert "Traceback" not in loser
    winner = (root / "ref1", root / "ref2")[[p.exitcode for p in procs].index(0)]
    marker = json.loads((out / "m" / ".model.json").read_text())
    assert marker["identity"] == str(winner.resolve())
    fingerprints = {json.loads(f.read_text())["model_fingerprint"] for f in (out / "m").glob("*__*.json")}
    assert len(fingerprints) == 1, fingerprints


# ---- case 3: two models sharing a folder name ------------------------------------------------

def _result(folder: Path, model: str, fingerprint: str, value: float) -> None:
    folder.mkdir(parents=True)
    (folder / "toy__zero-shot.json").write_text(json.dumps({
        "model": model, "dataset": "toy", "task": "zero-shot", "model_fingerprint": f"{model}-{fingerprint}",
        "metrics": {"accuracy": value, "balanced_accuracy": value}, "ci": {},
        "catalog": {"name": "c", "listed": ["toy"]}}))


def test_report_keeps_two_models_with_one_name_apart(tmp_path, capsys):
    results = tmp_path / "results"
    _result(results / "a" / "s1", "s1", "1111aaaa2222bbbb", 0.25)
    _result(results / "b" / "s1", "s1", "3333cccc4444dddd", 0.125)
    code, err = cli(capsys, "report", results)
    assert code == 0, err
    import csv

    rows = [r for r in csv.DictReader(open(results / "report" / "headline.csv")) if r["column"] == "zero-shot"]
    assert len(rows) == 2, rows
    assert sorted(float(r["value"]) for r in rows) == [0.125, 0.25]  # not averaged into 0.1875
    labels = [r["model"] for r in rows]
    assert len(set(labels)) == 2 and all("s1" in m for m in labels), labels
    assert any("1111aaaa" in m for m in labels) and any("3333cccc" in m for m in labels), labels
    assert "0.188" not in (results / "report" / "results.md").read_text()


# ---- case 4: --overwrite and RUN/eval --------------------------------------------------------

def test_overwrite_also_removes_the_old_models_eval_results(world, tmp_path, capsys):
    root, data, _ = world
    run = tmp_path / "run"
    shutil.copytree(root / "ref1", run)
    code, err = cli(capsys, "eval", "--model", run, "--out", run / "eval", *EVAL, _zero_shot_set())
    assert code == 0, err
    (run / "eval" / "notes.txt").write_text("mine")
    old = sorted(p.relative_to(run).as_posix() for p in (run / "eval").rglob("*.json"))
    assert old
    code, err = cli(capsys, "pretrain", *stage1_args(data, run, "--max-steps", "1", "--overwrite"))
    assert code == 0, err
    assert (run / "eval" / "notes.txt").read_text() == "mine"
    assert not list((run / "eval").rglob("*.json")), list((run / "eval").rglob("*"))
    assert all(name in err for name in old), err
    code, err = cli(capsys, "export", "--checkpoint", run, "--out", tmp_path / "export", "--no-verify")
    assert code == 0, err
    card = (tmp_path / "export" / "README.md").read_text()
    assert "No evaluation results" in card and _zero_shot_set() not in card


# ---- case 5: a finished run and --resume latest ----------------------------------------------

def test_resume_of_a_finished_run_is_a_clean_no_op(world, tmp_path, capsys):
    root, data, _ = world
    run = tmp_path / "run"
    shutil.copytree(root / "ref1", run)
    before = snapshot(run)
    code, err = cli(capsys, "pretrain", *stage1_args(data, run, "--resume", "latest"))
    assert code == 0, err
    assert "finished" in err and "step 8" in err, err
    assert snapshot(run) == before
    code, err = cli(capsys, "pretrain", *stage1_args(data, run, "--resume", "latest", "--lr", "5e-4"))
    assert code == 0, err
    assert "finished" in err and "optim.lr" in err and "5e-4" in err.replace("0.0005", "5e-4"), err
    assert snapshot(run) == before


# ---- case 6: a selection replaced under a run ------------------------------------------------

def test_a_selection_is_not_replaced_silently_and_a_run_notices_a_data_change(world, tmp_path, capsys):
    _, data, _ = world
    subset = tmp_path / "subset"
    select = ["data", "select", "--data", data, "--index-dir", tmp_path / "index", "--out", subset, "--select"]
    code, err = cli(capsys, *select, "caption=a red square,a green square")
    assert code == 0, err
    run = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(subset, run, "--max-steps", "1"))
    assert code == 0, err
    kept = snapshot(subset)
    code, err = cli(capsys, *select, "caption=a red square,a green square,a blue square,a yellow square")
    clean_refusal(code, err, str(subset), "--overwrite")
    assert snapshot(subset) == kept
    code, err = cli(capsys, *select, "caption=a red square,a green square,a blue square,a yellow square",
                    "--overwrite")
    assert code == 0, err
    state = snapshot(run)
    code, err = cli(capsys, "pretrain", *stage1_args(subset, run, "--max-steps", "2", "--resume", "latest"))
    clean_refusal(code, err, "data", "8", "16")
    assert snapshot(run) == state


# ---- cases 7, 8, 9: init files ---------------------------------------------------------------

def _weights(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "ref1" / "checkpoints" / f"step_{latest_step(root / 'ref1'):08d}"
                     / "open_clip_model.safetensors"))


def test_image_init_without_visual_tensors_is_refused(world, tmp_path, capsys):
    from safetensors.torch import save_file

    root, data, _ = world
    no_visual = {k: v.contiguous() for k, v in _weights(root).items() if not k.startswith("visual.")}
    save_file(no_visual, str(tmp_path / "clip.safetensors"))
    code, err = cli(capsys, "pretrain", *stage1_args(data, tmp_path / "run", "--max-steps", "1",
                                                     "--model.image_init", tmp_path / "clip.safetensors"))
    clean_refusal(code, err, "--model.image_init", "visual.")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_image_init_folder_with_two_weight_files_is_refused(world, tmp_path, capsys):
    from safetensors.torch import save_file

    root, data, _ = world
    folder = tmp_path / "weights"
    folder.mkdir()
    tensors = {k: v.contiguous() for k, v in _weights(root).items()}
    save_file(tensors, str(folder / "a.safetensors"))
    save_file({k: v * 2 for k, v in tensors.items()}, str(folder / "b.safetensors"))
    code, err = cli(capsys, "pretrain", *stage1_args(data, tmp_path / "run", "--max-steps", "1",
                                                     "--model.image_init", folder))
    clean_refusal(code, err, "--model.image_init", "a.safetensors", "b.safetensors")


def test_hf_text_path_with_an_open_clip_text_tower_is_refused(world, tmp_path, capsys):
    _, data, _ = world
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, err = cli(capsys, "pretrain", *stage1_args(data, tmp_path / "run", "--max-steps", "1",
                                                     "--model.hf_text_path", bert))
    clean_refusal(code, err, "--model.hf_text_path", str(bert), "open_clip")


# ---- cases 13, 14: alignment and the starting checkpoint --------------------------------------

def test_distill_resume_after_the_alignment_was_replaced_is_refused(world, tmp_path, capsys):
    _, data, store0 = world
    store = tmp_path / "store"
    shutil.copytree(store0, store)
    align = ["align", "--store", store, "--latent-dim", "64", "--steps", "2", "--no-progress"]
    code, err = cli(capsys, *align)
    assert code == 0, err
    run = tmp_path / "s2"
    args = stage2_args(data, store, run, "--distill.target_space", "projection")
    code, err = cli(capsys, "distill", *args, "--max-steps", "1")
    assert code == 0, err
    state = json.loads((run / "checkpoints" / "step_00000001" / "train_state.json").read_text())
    from mmkd.utils.io import sha256_file

    assert state["inputs"]["alignment"]["sha256"] == sha256_file(store / "alignment.safetensors")
    code, err = cli(capsys, *align[:-1], "--seed", "1", "--no-progress")
    assert code == 0, err
    before = snapshot(run)
    code, err = cli(capsys, "distill", *args, "--max-steps", "2", "--resume", "latest")
    clean_refusal(code, err, "alignment", "changed")
    assert snapshot(run) == before


def test_resume_from_another_runs_checkpoint_records_where_it_started(world, tmp_path, capsys):
    root, data, _ = world
    ckpt = root / "ref1" / "checkpoints" / "step_00000007"
    run = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(data, run, "--resume", ckpt))
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert str(ckpt.resolve()) in json.dumps(summary["init"]), summary["init"]
    assert "random" not in json.dumps(summary["init"]), summary["init"]
    code, err = cli(capsys, "export", "--checkpoint", run, "--out", tmp_path / "export", "--no-verify")
    assert code == 0, err
    card = (tmp_path / "export" / "README.md").read_text()
    init_row = next(line for line in card.splitlines() if line.startswith("| initial weights"))
    assert str(ckpt.resolve()) in init_row, init_row


# ---- case 15: eval of a run still training ---------------------------------------------------

def test_eval_of_a_run_still_training_says_so_and_names_the_step(world, tmp_path, capsys):
    _, data, _ = world
    run = tmp_path / "run"
    proc = fork(_cli_in_child, ["pretrain", *stage1_args(data, run, "--epochs", "50")], str(tmp_path / "err.txt"))
    try:
        assert wait_until(lambda: latest_step(run) >= 1, proc)
        code, err = cli(capsys, "eval", "--model", run, "--out", tmp_path / "EV", *EVAL, _zero_shot_set())
        assert code == 0, err
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert "still being trained" in err and "step_" in err, err
    folders = [p.name for p in (tmp_path / "EV").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and folders[0].startswith("run-step_"), folders
    record = json.loads(next((tmp_path / "EV" / folders[0]).glob("*__*.json")).read_text())
    assert folders[0].removeprefix("run-") in json.dumps(record["model_provenance"])


# ---- case 16: multi-label zero-shot in the report --------------------------------------------

def test_multilabel_sets_are_in_the_headline_and_results_are_valid_json(world, tmp_path, capsys):
    root, _, _ = world
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (16, 14)).astype(np.uint8)
    labels[:, 3] = 0  # a label without positives: its AUROC and AP are undefined
    np.savez(tmp_path / "chestmnist.npz", test_images=rng.integers(0, 255, (16, 28, 28), dtype=np.uint8),
             test_labels=labels, train_images=np.zeros((1, 28, 28), np.uint8), train_labels=labels[:1])
    (tmp_path / "cat.yaml").write_text(json.dumps({"datasets": {
        "chest": {"tasks": ["zero-shot"], "format": "medmnist", "path": "chestmnist.npz",
                  "templates": ["a chest x-ray with {c}"]}}}))
    out = tmp_path / "EV"
    code, err = cli(capsys, "eval", "--model", root / "ref1", "--datasets", tmp_path / "cat.yaml", "--tasks",
                    "zero-shot", "--num-bootstrap", "20", "--out", out)
    assert code == 0, err
    record = strict_json(out / "ref1" / "chest__zero-shot.json")
    per_label = record["details"]["per_label_auroc"]
    assert per_label[list(per_label)[3]] is None and all(v is None or math.isfinite(v) for v in per_label.values())
    code, err = cli(capsys, "report", out)
    assert code == 0, err
    import csv

    rows = list(csv.DictReader(open(out / "report" / "headline.csv")))
    assert any(r["column"] != "overall" and float(r["value"]) == pytest.approx(record["metrics"]["auroc"])
               for r in rows), rows
    headline = (out / "report" / "results.md").read_text().split("## Per dataset")[0]
    assert "0 task types" not in headline and "datasets run" not in headline, headline

    # beside a single-label set, the zero-shot column does not count the multi-label one as not run
    from mmkd.evaluation.runner import load_catalog

    mini = next(e for e in load_catalog("real_mini") if e.format == "medmnist" and "zero-shot" in e.tasks)
    cat = {"chest": json.loads((tmp_path / "cat.yaml").read_text())["datasets"]["chest"],
           "single": {**mini.raw, "tasks": ["zero-shot"], "path": str(mini.path)}}
    (tmp_path / "cat2.yaml").write_text(json.dumps({"datasets": cat}))
    code, err = cli(capsys, "eval", "--model", root / "ref1", "--datasets", tmp_path / "cat2.yaml", "--tasks",
                    "zero-shot", "--num-bootstrap", "0", "--out", tmp_path / "EV2")
    assert code == 0, err
    code, err = cli(capsys, "report", tmp_path / "EV2")
    assert code == 0, err
    headline = (tmp_path / "EV2" / "report" / "results.md").read_text().split("## Per dataset")[0]
    assert "datasets run" not in headline, headline
    columns = {r["column"] for r in csv.DictReader(open(tmp_path / "EV2" / "report" / "headline.csv"))}
    assert len(columns) == 3, columns  # single-label zero-shot, multi-label zero-shot, overall
