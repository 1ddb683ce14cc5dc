"""Nothing lost, nothing mislabelled: run folders, outputs, stores and checkpoints that cannot be
silently overwritten, mixed up or corrupted.

One test per case. Commands run in-process through `mmkd.cli.main` (an exception other than a
UsageError would surface as a test error, i.e. a traceback); signals and concurrent writers use
real child processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmkd.cli import main
from rel_helpers import (clean_refusal, cli, fork, latest_step, make_pairs, snapshot, stage1_args, stage2_args,
                         training_world, wait_until, write_store)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two tiny open_clip teachers saved in their library's own format."""
    from mmkd.teachers.testing import make_open_clip_teacher

    root = tmp_path_factory.mktemp("teachers")
    return {"a": f"local-dir:{make_open_clip_teacher(root / 'a', seed=3)}",
            "b": f"local-dir:{make_open_clip_teacher(root / 'b', seed=4, embed_dim=24)}"}


# ---- run folders ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [1, 2])
def test_rerun_into_a_run_folder_is_refused_without_resume_or_overwrite(world, tmp_path, capsys, stage):
    root, data, store = world
    out = tmp_path / "run"
    shutil.copytree(root / f"ref{stage}", out)
    before = snapshot(out)
    args = stage1_args(data, out) if stage == 1 else stage2_args(data, store, out)
    code, err = cli(capsys, "pretrain" if stage == 1 else "distill", *args)
    clean_refusal(code, err, "--resume", "--overwrite", str(out))
    assert snapshot(out) == before


def test_overwrite_removes_only_what_mmkd_owns_and_says_what(world, tmp_path, capsys):
    root, data, _ = world
    out = tmp_path / "run"
    shutil.copytree(root / "ref1", out)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "my_backup").mkdir()
    (out / "checkpoints" / "my_backup" / "w.bin").write_bytes(b"mine too")
    old = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "3", "--overwrite"))
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "my_backup" / "w.bin").read_bytes() == b"mine too"
    assert "removed" in err and all(name in err for name in old), err
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert json.loads((out / "summary.json").read_text())["num_steps"] == 3


@pytest.mark.parametrize("command", ["pretrain", "distill", "eval", "report", "align"])
def test_out_naming_an_existing_file_is_a_clear_error(world, tmp_path, capsys, command):
    root, data, store = world
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    results = tmp_path / "results"
    (results / "m").mkdir(parents=True)
    (results / "m" / "toy__zero-shot.json").write_text(json.dumps(
        {"model": "m", "dataset": "toy", "task": "zero-shot", "metrics": {"accuracy": 0.5}, "ci": {}}))
    args = {
        "pretrain": ["pretrain", *stage1_args(data, user_file)],
        "distill": ["distill", *stage2_args(data, store, user_file)],
        "eval": ["eval", "--model", root / "ref1", "--datasets", "real_mini", "--tasks", "zero-shot",
                 "--out", user_file],
        "report": ["report", results, "--out", user_file],
        "align": ["align", "--store", store, "--latent-dim", "64", "--steps", "2", "--out", user_file],
    }[command]
    code, err = cli(capsys, *args)
    clean_refusal(code, err, "--out", str(user_file))
    assert user_file.read_text() == "precious"


def test_align_out_json_cannot_overwrite_its_own_weights(world, tmp_path, capsys):
    _, _, store = world
    out = tmp_path / "align.json"
    code, err = cli(capsys, "align", "--store", store, "--latent-dim", "64", "--steps", "2", "--out", out)
    clean_refusal(code, err, "--out", ".safetensors")
    assert not out.exists()


def test_report_and_eval_do_not_replace_a_users_file(world, tmp_path, capsys):
    root, _, _ = world
    results = tmp_path / "results"
    (results / "m").mkdir(parents=True)
    (results / "m" / "toy__zero-shot.json").write_text(json.dumps(
        {"model": "m", "dataset": "toy", "task": "zero-shot", "metrics": {"accuracy": 0.5}, "ci": {}}))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("my,own\n1,2\n")
    code, err = cli(capsys, "report", results, "--out", folder)
    clean_refusal(code, err, "--out", "results.csv", "--overwrite")
    assert (folder / "results.csv").read_text() == "my,own\n1,2\n"

    from mmkd.evaluation.runner import load_catalog

    out = tmp_path / "eval"
    first = next(e for e in load_catalog("real_mini") if "zero-shot" in e.tasks)
    target = out / "ref1" / f"{first.name}__zero-shot.json"
    target.parent.mkdir(parents=True)
    target.write_text("my notes, not a result\n")
    code, err = cli(capsys, "eval", "--model", root / "ref1", "--datasets", "real_mini", "--tasks", "zero-shot",
                    "--num-bootstrap", "0", "--out", out)
    clean_refusal(code, err, str(target), "--overwrite")
    assert target.read_text() == "my notes, not a result\n"


def test_export_of_a_forged_checkpoint_or_onto_a_full_disk_ends_in_a_message(world, tmp_path, capsys,
                                                                             monkeypatch):
    root, _, _ = world
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ref1" / "checkpoints" / f"step_{latest_step(root / 'ref1'):08d}", ckpt)
    weights = ckpt / "open_clip_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes((10 ** 12).to_bytes(8, "little") + b'{"a": 1}')  # header length past the end
    out = tmp_path / "export"
    code, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", out)
    clean_refusal(code, err, "open_clip_model.safetensors")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))

    weights.write_bytes(good)
    monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"1:{out}")
    capsys.readouterr()
    code = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert str(out) in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_resume_compares_resolved_data_paths(world, tmp_path, capsys, monkeypatch):
    _, data, _ = world
    monkeypatch.chdir(data.parent.parent)
    rel = f"{data.parent.name}/{data.name}"
    out = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(f"./{rel}", out, "--max-steps", "2"))
    assert code == 0, err
    code, err = cli(capsys, "pretrain", *stage1_args(rel, out, "--max-steps", "3", "--resume", "latest"))
    assert code == 0, err
    code, err = cli(capsys, "pretrain", *stage1_args(data.resolve(), out, "--max-steps", "4", "--resume", "latest"))
    assert code == 0, err
    assert latest_step(out) == 4


def test_resume_takes_the_data_from_where_it_moved_and_refuses_other_data_there(world, tmp_path, capsys):
    """Data moved (or copied to a node's scratch) resumes: its samples are compared by digest, not by path; other
    data under the new path is refused before anything is written."""
    import shutil

    _, data, _ = world
    out = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "2"))
    assert code == 0, err
    moved = tmp_path / "scratch" / data.parent.name
    shutil.copytree(data.parent, moved)
    code, err = cli(capsys, "pretrain", *stage1_args(moved / data.name, out, "--max-steps", "3", "--resume", "latest"))
    assert code == 0, err
    assert latest_step(out) == 3
    other = make_pairs(tmp_path / "other", n=40)
    before = snapshot(out)
    code, err = cli(capsys, "pretrain", *stage1_args(other, out, "--max-steps", "4", "--resume", "latest"))
    clean_refusal(code, err, "the training data changed")
    assert snapshot(out) == before


def test_resume_with_another_context_length_is_refused(world, tmp_path, capsys):
    """The resumed student is the checkpoint's: a changed --model.context_length is refused, not ignored."""
    _, data, _ = world
    out = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "1"))
    assert code == 0, err
    before = snapshot(out)
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "2", "--resume", "latest",
                                                     "--model.context_length", "8"))
    clean_refusal(code, err, "model.context_length")
    assert snapshot(out) == before


def test_extract_warns_when_a_teacher_is_rarely_available(world, tmp_path, capsys, teachers):
    _, data, _ = world
    out = tmp_path / "store"
    code, err = cli(capsys, "extract", "--data", data, "--teacher", f"a={teachers['a']}", "--out", out,
                    "--availability", "threshold", "--threshold", "0.999", "--no-progress")
    assert code == 0, err
    assert "a:" in err and "5 %" in err and "--availability" in err, err
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert any("--availability" in w and "'a'" in w for w in summary["warnings"]), summary


# ---- loading weights -----------------------------------------------------------------------

def _weightless(root: Path, tmp_path: Path, kind: str) -> Path:
    src = root / "ref1" / "checkpoints" / f"step_{latest_step(root / 'ref1'):08d}"
    if kind == "run":  # a run folder whose latest checkpoint lost its weights
        folder = tmp_path / "run"
        shutil.copytree(root / "ref1", folder)
        (folder / "checkpoints" / src.name / "open_clip_model.safetensors").unlink()
        return folder
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(src / "open_clip_config.json", folder)
    if kind == "bin":  # only a file mmkd refuses to unpickle
        (folder / "open_clip_model.bin").write_bytes(b"\x80\x04K\x01.")
    return folder


@pytest.mark.parametrize("kind", ["config-only", "bin", "run"])
@pytest.mark.parametrize("command", ["predict", "eval", "distill"])
def test_a_folder_without_loadable_weights_is_refused(world, tmp_path, capsys, kind, command):
    root, data, store = world
    folder = _weightless(root, tmp_path, kind)
    image = next((data.parent / "img").glob("*.png"))
    args = {
        "predict": ["predict", "--model", folder, "--image", image, "--labels", "red;blue"],
        "eval": ["eval", "--model", folder, "--datasets", "real_mini", "--tasks", "zero-shot", "--out",
                 tmp_path / "results"],
        "distill": ["distill", *stage2_args(data, store, tmp_path / "s2", "--model", folder)],
    }[command]
    code, err = cli(capsys, *args)
    clean_refusal(code, err, "weights")
    assert str(folder) in err or folder.name in err, err
    assert not (tmp_path / "results").exists() and not (tmp_path / "s2" / "checkpoints").exists()


# ---- non-finite weights and signals ---------------------------------------------------------

def test_nonfinite_weights_stop_the_run_before_a_checkpoint_is_written(world, tmp_path, capsys, monkeypatch):
    """An update that leaves a NaN weight (MMKD_TEST_NAN_WEIGHTS_AT_STEPS, as an overflowing update would) while
    the loss of that step was finite: no checkpoint of it, and the message names the last finite one."""
    _, data, _ = world
    out = tmp_path / "run"
    monkeypatch.setenv("MMKD_TEST_NAN_WEIGHTS_AT_STEPS", "2")
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "5"))
    assert code != 0 and "Traceback" not in err, err
    assert "not finite" in err and "step_00000002" in err, err
    assert latest_step(out) == 2  # no checkpoint holding non-finite weights was written
    from safetensors.torch import load_file

    for ckpt in (out / "checkpoints").glob("step_*"):
        for t in load_file(str(ckpt / "open_clip_model.safetensors")).values():
            assert bool(t.float().isfinite().all()), ckpt


def test_resume_from_a_nonfinite_checkpoint_is_refused(world, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    root, data, _ = world
    out = tmp_path / "run"
    shutil.copytree(root / "ref1", out)
    last = out / "checkpoints" / f"step_{latest_step(out):08d}"
    tensors = load_file(str(last / "open_clip_model.safetensors"))
    first = next(iter(tensors))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(last / "open_clip_model.safetensors"))
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--epochs", "3", "--resume", "latest"))
    clean_refusal(code, err, "not finite", last.name, "step_00000007")


def _cli_in_child(argv: list[str], err_file: str) -> None:
    sys.stderr = open(err_file, "w", buffering=1)
    sys.exit(main(argv))


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_exits_nonzero_with_the_resume_command(world, tmp_path, signum, code):
    _, data, _ = world
    out = tmp_path / "run"
    err_file = tmp_path / "stderr.txt"
    proc = fork(_cli_in_child, ["pretrain", *stage1_args(data, out, "--epochs", "20")], str(err_file))
    assert wait_until(lambda: latest_step(out) >= 1, proc)
    os.kill(proc.pid, signum)
    proc.join(timeout=120)
    err = err_file.read_text()
    assert proc.exitcode == code, (proc.exitcode, err)
    step = json.loads((out / "summary.json").read_text())["num_steps"]
    assert f"step {step}" in err and "--resume latest" in err and str(out) in err, err
    assert latest_step(out) == step


# ---- store identity --------------------------------------------------------------------------

def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def test_store_rows_record_content_digests_and_other_data_is_refused(tmp_path, capsys, teachers):
    import csv

    data = make_pairs(tmp_path / "data", n=24)
    other = make_pairs(tmp_path / "other", n=24, seed=7)  # same sample ids and captions, other images
    store = tmp_path / "store"
    code, err = cli(capsys, "extract", "--data", data, "--teacher", f"a={teachers['a']}", "--out", store,
                    "--chunk-rows", "8", "--no-progress")
    assert code == 0, err
    rows = list(csv.DictReader(open(data)))
    content = np.load(store / "content.npy")  # 16 bytes a row, then padding that keeps every chunk on a page
    for i, row in enumerate(rows):
        assert bytes(content[i, :8]) == _digest((data.parent / row["image"]).read_bytes())
        assert bytes(content[i, 8:16]) == _digest(row["caption"].encode())

    manifest = (store / "manifest.json").read_bytes()
    code, err = cli(capsys, "extract", "--data", other, "--teacher", f"b={teachers['b']}", "--out", store,
                    "--no-progress")
    clean_refusal(code, err, "s000")
    assert (store / "manifest.json").read_bytes() == manifest
    code, err = cli(capsys, "distill", *stage2_args(other, store, tmp_path / "s2"))
    clean_refusal(code, err, "s000", "--store")
    one = tmp_path / "one"  # a single changed image is found by the full check
    shutil.copytree(data.parent, one)
    img = one / rows[13]["image"]
    img.write_bytes((other.parent / rows[13]["image"]).read_bytes())
    code, err = cli(capsys, "distill", *stage2_args(one / data.name, store, tmp_path / "s2",
                                                    "--distill.check_data", "full"))
    clean_refusal(code, err, rows[13]["sample_id"])


# ---- locks -----------------------------------------------------------------------------------

def _run_cli_quiet(argv: list[str]) -> None:
    sys.exit(main(argv))


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(world, tmp_path, capsys):
    root, data, _ = world
    out = tmp_path / "run"
    proc = fork(_run_cli_quiet, ["pretrain", *stage1_args(data, out, "--epochs", "50")])
    try:
        assert wait_until(lambda: latest_step(out) >= 1, proc)
        code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--epochs", "50", "--resume", "latest"))
        clean_refusal(code, err, f"pid {proc.pid}", str(out))
        from mmkd import load_model  # readers are never blocked

        assert load_model(str(out)).embed_dim > 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()


def test_two_extracts_adding_different_teachers_never_drop_one(world, tmp_path, capsys, teachers):
    _, data, _ = world
    store = tmp_path / "store"
    env = {"MMKD_TEST_COMMIT_DELAY_S": "0.3"}
    proc = fork(_run_cli_quiet, ["extract", "--data", str(data), "--teacher", f"a={teachers['a']}", "--out",
                                 str(store), "--chunk-rows", "8", "--no-progress"], env=env)
    assert wait_until(lambda: (store / "manifest.json").is_file(), proc)
    code, err = cli(capsys, "extract", "--data", data, "--teacher", f"b={teachers['b']}", "--out", store,
                    "--no-progress")
    clean_refusal(code, err, f"pid {proc.pid}")
    from mmkd.data.feature_store import FeatureStore

    assert FeatureStore(store, allow_partial=True).sample_ids  # a reader is not blocked
    proc.join(timeout=300)
    assert proc.exitcode == 0
    code, err = cli(capsys, "extract", "--data", data, "--teacher", f"b={teachers['b']}", "--out", store,
                    "--no-progress")
    assert code == 0, err
    assert FeatureStore(store).teachers == ["a", "b"]


# ---- manifests, file modes, config history --------------------------------------------------

def test_manifest_paths_are_confined_to_the_store(world, tmp_path, capsys):
    _, data, _ = world
    store = write_store(data, tmp_path / "deep" / "store")
    victim = tmp_path / "victim.npy"
    np.save(victim, np.ones(32, bool))
    before = victim.read_bytes()
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["teachers"][1]["arrays"]["available"]["file"] = "../../victim.npy"
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, err = cli(capsys, "extract", "--reapply-availability", "--out", store, "--availability", "always")
    clean_refusal(code, err, "../../victim.npy", "outside")
    assert victim.read_bytes() == before
    code, err = cli(capsys, "align", "--store", store, "--latent-dim", "64", "--steps", "2")
    clean_refusal(code, err, "outside")


def test_file_modes_follow_the_umask(world, tmp_path, capsys):
    _, data, _ = world
    old = os.umask(0o002)
    try:
        out = tmp_path / "run"
        code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "1"))
        assert code == 0, err
        export = tmp_path / "export"
        code, err = cli(capsys, "export", "--checkpoint", out, "--out", export, "--no-verify")
        assert code == 0, err
    finally:
        os.umask(old)
    ckpt = out / "checkpoints" / "step_00000001"
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(ckpt) == 0o775 and mode(export) == 0o775
    for f in [*ckpt.iterdir(), *export.iterdir(), out / "config.yaml"]:
        assert mode(f) == 0o664, (f, oct(mode(f)))


def test_a_resume_with_changed_hyperparameters_is_recorded_as_a_new_segment(world, tmp_path, capsys):
    _, data, _ = world
    out = tmp_path / "run"
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "2"))
    assert code == 0, err
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--max-steps", "3", "--resume", "latest",
                                                     "--lr", "5e-4"))
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 5e-4 and saved["train"]["max_steps"] == 3
    segments = saved["segments"]
    assert [s["start_step"] for s in segments] == [0, 2]
    assert segments[1]["changes"]["optim.lr"] == [1e-3, 5e-4]
    assert segments[1]["changes"]["train.max_steps"] == [2, 3]
    assert "train.resume" not in segments[1]["changes"]
    from mmkd.config import build_config  # the saved file is still a usable --config recipe

    assert build_config(str(out / "config.yaml"), []).optim.lr == 5e-4
