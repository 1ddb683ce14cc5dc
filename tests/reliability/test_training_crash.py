"""Stage 1 and stage 2 under SIGKILL and SIGTERM: a resumed run ends bit for bit where an
uninterrupted one does (weights, optimiser state, step, RNG, counters); SIGTERM saves and exits 0.

Fast cases kill once; the slow campaigns kill each run many times at random steps (with a
random extra delay, so kills land inside steps and inside checkpoint writes).
"""

from __future__ import annotations

import json
import os
import random
import signal

import pytest

from rel_helpers import (assert_same_run, fork, latest_step, one_thread, report, run_stage1,
                         run_stage2, stage1_args, stage2_args, training_world, wait_until, kill_when)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


def _stage(world, stage: int):
    root, data, store = world
    if stage == 1:
        return run_stage1, (lambda out, *x: stage1_args(data, out, *x)), root / "ref1"
    return run_stage2, (lambda out, *x: stage2_args(data, store, out, *x)), root / "ref2"


def kill_and_resume(world, stage: int, out, kills: int, rng: random.Random) -> dict:
    """Run, SIGKILL after a random checkpoint (plus a random delay), resume; `kills` times; then finish."""
    run, args, _ = _stage(world, stage)
    figures = {"kills": 0, "killed_during_checkpoint_write": 0, "finished_before_kill": 0}
    for _ in range(kills):
        start = latest_step(out)
        if start >= 7:
            break
        target = rng.randint(start + 1, 7)
        extra = ["--resume", "latest"] if start else []
        proc = fork(run, args(out, *extra))
        if not kill_when(proc, lambda: latest_step(out) >= target, rng.uniform(0, 0.05)):
            figures["finished_before_kill"] += 1
            continue
        figures["kills"] += 1
        if any((out / "checkpoints").glob(".tmp-*")):
            figures["killed_during_checkpoint_write"] += 1
        assert not (out / "summary.json").exists()
    with one_thread():
        summary = run(args(out, "--resume", "latest"))
    assert summary["completed"] and summary["num_steps"] == 8
    return figures


@pytest.mark.parametrize("stage", [1, 2])
def test_sigterm_then_sigkill_then_resume_equals_the_uninterrupted_run(world, stage, tmp_path):
    """SIGTERM saves and exits 0; a resumed run is then SIGKILLed; the second resume ends where the
    uninterrupted run does, bit for bit."""
    run, args, ref = _stage(world, stage)
    out = tmp_path / "run"
    proc = fork(run, args(out))
    assert wait_until(lambda: latest_step(out) >= 2, proc)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(timeout=120)
    assert proc.exitcode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_signal"] and not summary["completed"]
    assert 2 <= summary["num_steps"] < 8 and latest_step(out) == summary["num_steps"]
    state = json.loads((out / "checkpoints" / f"step_{summary['num_steps']:08d}" / "train_state.json").read_text())
    assert state["reason"] == "signal"
    (out / "summary.json").unlink()  # the SIGKILLed run below must not leave one

    figures = kill_and_resume(world, stage, out, kills=1, rng=random.Random(stage))
    assert figures["kills"] + figures["finished_before_kill"] == 1
    assert_same_run(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_campaign_many_random_sigkills(world, stage, tmp_path_factory, capsys):
    rng = random.Random(1234 + stage)
    totals = {"runs": 0, "kills": 0, "killed_during_checkpoint_write": 0, "finished_before_kill": 0}
    for trial in range(6):
        out = tmp_path_factory.mktemp(f"campaign{stage}-{trial}") / "run"
        figures = kill_and_resume(world, stage, out, kills=5, rng=rng)
        assert_same_run(out, _stage(world, stage)[2])
        totals["runs"] += 1
        for k, v in figures.items():
            totals[k] += v
    report(capsys, f"stage {stage} SIGKILL campaign", **totals, runs_equal_to_uninterrupted=totals["runs"])
    assert totals["kills"] >= 12
