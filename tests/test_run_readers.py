"""Reading a run that is still training: it keeps only its newest checkpoints and removes older ones as it
saves, so the checkpoint a reader picked can go while it is read (`mmkd.utils.runs.read_newest_checkpoint`).

Real checkpoints (a tiny open_clip student through `save_checkpoint`), a real pruning save between picking a
checkpoint and reading its files; the weights read are compared with the model that wrote the newer one."""

from __future__ import annotations

import pytest
import torch

from mmkd.errors import UsageError
from mmkd.models.student import create_student
from mmkd.training.checkpoint import save_checkpoint
from mmkd.utils.runs import read_newest_checkpoint


def _save(run, step, seed):
    student = create_student("mmkd-tiny-vit", seed=seed)
    save_checkpoint(run, step, student.model, student.open_clip_config(), None, {"config": {}}, keep=1)
    return student.model.state_dict()


def _read_after_a_save(run, picked: list):
    """The reader: the first time, the run saves its next checkpoint (pruning the picked one) before the files
    are opened, as a training process between a reader's choice and its read."""
    def read(ckpt):
        picked.append(ckpt.name)
        if len(picked) == 1:
            _save(run, 2, seed=2)
        return create_student(str(ckpt)).model.state_dict()
    return read


def test_a_checkpoint_pruned_while_read_is_read_again_from_the_newest(tmp_path):
    run = tmp_path / "run"
    first = _save(run, 1, seed=1)
    picked: list[str] = []
    got = read_newest_checkpoint(run, _read_after_a_save(run, picked))
    assert picked == ["step_00000001", "step_00000002"]
    want = create_student("mmkd-tiny-vit", seed=2).model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], first[k]) for k in first)  # the two checkpoints differ: the check bites


def test_a_named_checkpoint_pruned_while_read_names_the_run_folder(tmp_path):
    run = tmp_path / "run"
    _save(run, 1, seed=1)
    with pytest.raises(UsageError, match="removed while it was read") as e:
        read_newest_checkpoint(run / "checkpoints" / "step_00000001", _read_after_a_save(run, []))
    assert repr(str(run)) in str(e.value)


def test_an_error_reading_a_checkpoint_that_stays_is_not_retried(tmp_path):
    run = tmp_path / "run"
    _save(run, 1, seed=1)
    calls = []

    def read(ckpt):
        calls.append(ckpt)
        return (ckpt / "no-such-file").read_bytes()

    with pytest.raises(FileNotFoundError):
        read_newest_checkpoint(run, read)
    assert len(calls) == 1
