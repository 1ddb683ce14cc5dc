"""Preemption as a cluster does it: a signal to the whole process group, DataLoader workers included.

SLURM signals every process of a job step; `--signal=B:USR1@120` asks for a checkpoint before the
time limit. The run must write its signal checkpoint and exit 143 (SIGTERM, SIGUSR1; 130 for
SIGINT), and the resumed run must end bit for bit where an uninterrupted one does
(mmkd.utils.signals). The slow campaigns repeat this for pretrain, distill and extract, and for a
2-rank torchrun.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from rel_helpers import (assert_same_run, fork, latest_step, one_thread, run_cli_in_own_group, run_stage1,
                         stage1_args, training_world, wait_until)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


def stop_by_group_signal(argv: list[str], out, sig: int, after_step: int = 2) -> dict:
    """Run `mmkd ARGV` in its own process group, signal the group once a checkpoint past `after_step`
    exists, and check the exit code and the signal checkpoint; returns the run's summary."""
    proc = fork(run_cli_in_own_group, argv, daemon=False)
    assert wait_until(lambda: latest_step(out) >= after_step, proc), "the run ended before its checkpoint"
    os.killpg(proc.pid, sig)
    proc.join(timeout=120)
    assert proc.exitcode == (130 if sig == signal.SIGINT else 143), proc.exitcode
    with pytest.raises(ProcessLookupError):  # the workers are gone with their parent
        os.killpg(proc.pid, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_signal"] and summary["signal"] == signal.Signals(sig).name
    assert not summary["completed"] and latest_step(out) == summary["num_steps"]
    state = json.loads((out / "checkpoints" / f"step_{summary['num_steps']:08d}" / "train_state.json").read_text())
    assert state["reason"] == "signal"
    return summary


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_group_signal_to_a_pretrain_with_workers_exits_143_and_resumes_exactly(world, sig, tmp_path):
    root, data, _ = world
    out = tmp_path / "run"
    workers = ("--data.num_workers", "2")
    stop_by_group_signal(["pretrain", *stage1_args(data, out, *workers)], out, sig)
    with one_thread():
        summary = run_stage1(stage1_args(data, out, "--resume", "latest", *workers))
    assert summary["completed"] and summary["num_steps"] == 8
    assert_same_run(out, root / "ref1")
