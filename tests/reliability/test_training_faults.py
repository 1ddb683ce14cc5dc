"""The trainer under write errors, non-finite losses and incompatible resumes.

Write errors: MMKD_TEST_ENOSPC_AT_WRITE fails the Nth atomic write with ENOSPC (test-only hook
in mmkd.utils.io), and a real tmpfs fills up. Non-finite losses: MMKD_TEST_NAN_AT_STEPS makes
the loss of those steps NaN (test-only hook in mmkd.training.loop). Runs are in-process.
Writes of the tiny stage-1 run: 1 config.yaml; step k's checkpoint 4k-2 .. 4k+1 (weights,
open_clip config, optimiser, train state); 34 summary.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmkd.cli import main
from rel_helpers import (assert_same_run, checkpoint_steps, latest_step, one_thread, report, run_stage1,
                         stage1_args, stage2_args, training_world, write_store)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    with one_thread():
        code = main(list(args))
    return code, capsys.readouterr().err


def checkpoint_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def fail_at_write_then_resume(world, out: Path, write: int, capsys, monkeypatch) -> str:
    root, data, _ = world
    monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"{write}:{out}")
    code, err = cli(capsys, "pretrain", *stage1_args(data, out))
    monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".*.tmp")), "partial files were left"
    for step in checkpoint_steps(out):  # every checkpoint left is whole
        assert checkpoint_tensors(out / "checkpoints" / f"step_{step:08d}")
    before = latest_step(out)
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--resume", "latest"))
    assert code == 0, err
    assert_same_run(out, root / "ref1")
    return f"{before}"


@pytest.mark.parametrize("write,message", [
    (12, "could not write checkpoint step_00000003"),  # the optimiser file of step 3
    (1, "cannot write the run folder"),
    (34, "could not write"),  # summary.json, after the final checkpoint
])
def test_write_error_keeps_the_previous_checkpoint_and_resume_finishes(world, tmp_path, capsys, monkeypatch,
                                                                       write, message):
    out = tmp_path / "run"
    root, data, _ = world
    monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"{write}:{out}")
    code, err = cli(capsys, "pretrain", *stage1_args(data, out))
    monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
    assert code == 1 and message in err and "No space left on device" in err and "Traceback" not in err, err
    if write == 12:
        assert latest_step(out) == 2 and "step_00000002 is intact" in err
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".*.tmp"))
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--resume", "latest"))
    assert code == 0, err
    assert_same_run(out, root / "ref1")


def test_a_really_full_disk_while_checkpointing(world, tmp_path, capsys):
    """Checkpoints of the tiny run are ~41 MB: on a 100 MB tmpfs the third one does not fit."""
    root, data, _ = world
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = mnt / "run"
        code, err = cli(capsys, "pretrain", *stage1_args(data, out))
        assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
        assert latest_step(out) >= 1 and not list(out.rglob(".tmp-*"))
        last = out / "checkpoints" / f"step_{latest_step(out):08d}"
        assert checkpoint_tensors(last) and f"{last.name} is intact" in err
        subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
        code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--resume", "latest"))
        assert code == 0, err
        assert_same_run(out, root / "ref1")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_nonfinite_steps_are_skipped_with_weights_and_optimiser_unchanged(world, tmp_path, monkeypatch):
    root, data, _ = world
    out = tmp_path / "run"
    monkeypatch.setenv("MMKD_TEST_NAN_AT_STEPS", "3,4")
    with one_thread():
        summary = run_stage1(stage1_args(data, out, "--train.keep_checkpoints", "100"))
    assert summary["completed"] and summary["num_steps"] == 8
    assert summary["num_bad_steps"] == 2 and summary["num_optimizer_steps"] == 6
    assert json.loads((out / "summary.json").read_text())["num_bad_steps"] == 2
    before = checkpoint_tensors(out / "checkpoints" / "step_00000003")  # after steps 0-2
    after = checkpoint_tensors(out / "checkpoints" / "step_00000005")  # after the bad steps 3 and 4
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    state = json.loads((out / "checkpoints" / "step_00000005" / "train_state.json").read_text())
    assert state["run_state"]["num_bad_steps"] == 2 and state["run_state"]["consecutive_bad_steps"] == 2
    assert not all(torch.equal(after[k], checkpoint_tensors(out / "checkpoints" / "step_00000006")[k])
                   for k in after), "the step after the bad ones trains again"


def test_consecutive_nonfinite_steps_stop_the_run_after_saving(world, tmp_path, capsys, monkeypatch):
    root, data, _ = world
    out = tmp_path / "run"
    monkeypatch.setenv("MMKD_TEST_NAN_AT_STEPS", "1,3,4,5,6,7")
    code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--train.max_bad_steps", "3",
                                                     "--train.keep_checkpoints", "100"))
    assert code == 2 and "max_bad_steps=3" in err and "Traceback" not in err, err
    assert latest_step(out) == 6  # steps 3, 4, 5 bad: saved at 6, then stopped
    state = json.loads((out / "checkpoints" / "step_00000006" / "train_state.json").read_text())
    assert state["reason"] == "non-finite loss" and state["run_state"]["num_bad_steps"] == 4
    good = checkpoint_tensors(out / "checkpoints" / "step_00000003")
    saved = checkpoint_tensors(out / "checkpoints" / "step_00000006")
    assert all(torch.equal(good[k], saved[k]) for k in good)


# ---- incompatible resumes: refused before anything is loaded, written or trained ----

def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run, except the writer lock's note of who holds it (mmkd.utils.locks)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".mmkd.lock"}


@pytest.mark.parametrize("change,expect", [
    (["--batch-size", "16"], "train.batch_size: the checkpoint has 8, this run 16"),
    (["--seed", "12"], "train.seed"),
    (["--model", "MODEL_JSON"], "model.name"),
])
def test_incompatible_stage1_resume_is_refused_and_changes_nothing(world, tmp_path, capsys, change, expect):
    root, data, _ = world
    run = tmp_path / "run"
    shutil.copytree(root / "ref1", run)
    model_json = tmp_path / "wide.json"
    model_json.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                      "patch_size": 8}, "text_cfg": {"context_length": 32, "vocab_size": 49408,
                                      "width": 32, "heads": 2, "layers": 1}}))
    change = [str(model_json) if c == "MODEL_JSON" else c for c in change]
    before = _snapshot(run)
    code, err = cli(capsys, "pretrain", *stage1_args(data, run, "--resume", "latest", *change))
    assert code == 2 and expect in err and "new --out folder" in err and "Traceback" not in err, err
    assert _snapshot(run) == before


def test_resuming_another_stage_or_other_teachers_is_refused(world, tmp_path, capsys):
    root, data, store = world
    run = tmp_path / "s1"
    shutil.copytree(root / "ref1", run)
    before = _snapshot(run)
    code, err = cli(capsys, "distill", *stage2_args(data, store, run, "--resume", "latest", "--seed", "11"))
    assert code == 2 and "belongs to a 'pretrain' run" in err and "--init" in err, err
    assert _snapshot(run) == before

    other = write_store(data, tmp_path / "other-store", dims=(24, 56))  # teacher t1 changed: 40 -> 56 dims
    run2 = tmp_path / "s2"
    shutil.copytree(root / "ref2", run2)
    before = _snapshot(run2)
    code, err = cli(capsys, "distill", *stage2_args(data, other, run2, "--resume", "latest"))
    assert code == 2 and "distill.teachers" in err and "('t1', 40)" in err and "('t1', 56)" in err, err
    assert _snapshot(run2) == before


@pytest.mark.slow
def test_campaign_write_error_at_every_write(world, tmp_path_factory, capsys, monkeypatch):
    root, data, _ = world
    refused = 0
    for write in range(1, 35):
        out = tmp_path_factory.mktemp(f"enospc-{write}") / "run"
        monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"{write}:{out}")
        code, err = cli(capsys, "pretrain", *stage1_args(data, out))
        monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
        assert code == 1 and "No space left on device" in err and "Traceback" not in err, (write, err)
        assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".*.tmp")), write
        for step in checkpoint_steps(out):
            assert checkpoint_tensors(out / "checkpoints" / f"step_{step:08d}")
        refused += 1
        code, err = cli(capsys, "pretrain", *stage1_args(data, out, "--resume", "latest"))
        assert code == 0, (write, err)
        assert_same_run(out, root / "ref1")
    report(capsys, "training write-error campaign", writes_failed=refused, clean_messages=refused,
           resumed_runs_equal_to_uninterrupted=refused)
