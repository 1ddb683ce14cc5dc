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
import random
import signal
import time

import pytest

from rel_helpers import (assert_same_run, fork, latest_step, one_thread, report, run_cli_in_own_group, run_stage1,
                         run_stage2, stage1_args, stage2_args, training_world, wait_until)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return training_world(tmp_path_factory)


def stop_by_group_signal(argv: list[str], out, sig: int, after_step: int = 2, delay_s: float = 0.0) -> dict:
    """Run `mmkd ARGV` in its own process group, signal the group `delay_s` after a checkpoint past
    `after_step` exists, and check the exit code and the signal checkpoint; returns the run's summary."""
    proc = fork(run_cli_in_own_group, argv, daemon=False)
    assert wait_until(lambda: latest_step(out) >= after_step, proc), "the run ended before its checkpoint"
    time.sleep(delay_s)
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


def test_group_sigterm_to_a_distill_with_workers_exits_143_and_resumes_exactly(world, tmp_path):
    """Stage 2 reads its teacher targets in the loader's workers (mmkd.training.targets): with 2 workers,
    stopped by a group-wide SIGTERM and resumed, it ends where the uninterrupted run without workers does."""
    root, data, store = world
    out = tmp_path / "run"
    workers = ("--data.num_workers", "2")
    stop_by_group_signal(["distill", *stage2_args(data, store, out, *workers)], out, signal.SIGTERM)
    with one_thread():
        summary = run_stage2(stage2_args(data, store, out, "--resume", "latest", *workers))
    assert summary["completed"] and summary["num_steps"] == 8
    assert_same_run(out, root / "ref2")


# ---- slow campaigns ----------------------------------------------------------------------------

TRIES = 10


def _stage_args(stage: str, data, store, out, *extra: str) -> list[str]:
    """A 16-step run (4 epochs) with 2 loader workers: room to stop it anywhere in its first half."""
    base = stage1_args if stage == "pretrain" else (lambda d, o, *x: stage2_args(d, store, o, *x))
    return base(data, out, "--epochs", "4", "--data.num_workers", "2", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_campaign_group_signals_to_training(world, stage, tmp_path_factory, capsys):
    """10 tries: SIGTERM or SIGUSR1 to the process group at a random step (and a random moment inside it)."""
    root, data, store = world
    run = run_stage1 if stage == "pretrain" else run_stage2
    rng = random.Random(26 + len(stage))
    ref = tmp_path_factory.mktemp(f"pre-{stage}-ref") / "run"
    with one_thread():
        run(_stage_args(stage, data, store, ref))
    figures = {"tries": 0, "exit_143_with_signal_checkpoint": 0, "resumed_equal_to_uninterrupted": 0}
    for trial in range(TRIES):
        out = tmp_path_factory.mktemp(f"pre-{stage}-{trial}") / "run"
        sig = rng.choice([signal.SIGTERM, signal.SIGUSR1])
        figures["tries"] += 1
        stop_by_group_signal([stage, *_stage_args(stage, data, store, out)], out, sig, after_step=rng.randint(1, 8),
                             delay_s=rng.uniform(0, 0.2))
        figures["exit_143_with_signal_checkpoint"] += 1
        with one_thread():
            assert run(_stage_args(stage, data, store, out, "--resume", "latest"))["completed"]
        assert_same_run(out, ref)
        figures["resumed_equal_to_uninterrupted"] += 1
    report(capsys, f"{stage}: signal to the process group (2 loader workers)", **figures)
    assert figures["resumed_equal_to_uninterrupted"] == TRIES


def _cli(argv: list[str], env: dict[str, str] | None = None) -> int:
    proc = fork(run_cli_in_own_group, argv, env=env, daemon=False)
    proc.join(timeout=300)
    return proc.exitcode


@pytest.mark.slow
def test_campaign_group_signals_to_extract(world, tmp_path_factory, capsys):
    """10 tries: SIGTERM or SIGUSR1 to the group of an extraction with 2 workers after a random number of
    committed chunks; it exits 143, and the rerun gives the uninterrupted store."""
    from helpers import assert_same_store
    from mmkd.teachers.testing import make_open_clip_teacher

    root, data, _ = world
    tmp = tmp_path_factory.mktemp("pre-extract")
    teacher = make_open_clip_teacher(tmp / "t", seed=3)

    def args(out):
        return ["extract", "--data", str(data), "--out", str(out), "--teacher", f"a=local-dir:{teacher}",
                "--chunk-rows", "4", "--batch-size", "2", "--workers", "2", "--no-progress"]

    ref = tmp / "ref"
    assert _cli(args(ref)) == 0
    rng = random.Random(2026)
    figures = {"tries": 0, "exit_143": 0, "reruns_equal_to_uninterrupted": 0}
    for trial in range(TRIES):
        out = tmp / f"store-{trial}"
        chunks = out / "teachers" / "a" / "chunks"
        target, sig = rng.randint(1, 5), rng.choice([signal.SIGTERM, signal.SIGUSR1])
        proc = fork(run_cli_in_own_group, args(out), env={"MMKD_TEST_COMMIT_DELAY_S": "0.2"}, daemon=False)
        figures["tries"] += 1
        assert wait_until(lambda: chunks.is_dir() and len(list(chunks.iterdir())) >= target, proc)
        os.killpg(proc.pid, sig)
        proc.join(timeout=120)
        assert proc.exitcode == 143, proc.exitcode
        figures["exit_143"] += 1
        assert _cli(args(out)) == 0
        assert_same_store(out, ref, check_summary=True)
        figures["reruns_equal_to_uninterrupted"] += 1
    report(capsys, "extract: signal to the process group (2 loader workers)", **figures)
    assert figures["reruns_equal_to_uninterrupted"] == TRIES


@pytest.mark.slow
@pytest.mark.distributed
def test_two_torchrun_ranks_stop_at_the_same_step_and_resume_exactly(world, tmp_path):
    """A 2-rank torchrun pretrain with 2 workers per rank: SIGUSR1 to rank 1 alone (the ranks agree on the
    step to stop at), resume, then SIGTERM to torchrun's process group (torchrun forwards it to its
    ranks), resume to the end: equal to the uninterrupted 2-rank run."""
    import subprocess

    from test_kill_rank import rank_pid, run_to_end, torchrun

    root, data, _ = world
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def args(out, *extra):
        return ["pretrain", *_stage_args("pretrain", data, None, out, *extra)]

    ref, out = tmp_path / "ref", tmp_path / "run"
    run_to_end(torchrun(29551, *args(ref)))
    for sig, after in ((signal.SIGUSR1, 2), (signal.SIGTERM, 6)):
        extra = ("--resume", "latest") if after > 2 else ()
        proc = subprocess.Popen(torchrun(29551, *args(out, *extra)), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert wait_until(lambda: latest_step(out) >= after, timeout=300), proc.stderr.read().decode()[-2000:]
        if sig == signal.SIGUSR1:
            os.kill(rank_pid(proc.pid, 1), sig)  # one rank only
        else:
            os.killpg(proc.pid, sig)
        assert proc.wait(timeout=300) != 0
        proc.stderr.close()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped_by_signal"] and summary["signal"] == signal.Signals(sig).name
        assert summary["num_steps"] == latest_step(out) < 16
        state = json.loads((out / "checkpoints" / f"step_{latest_step(out):08d}" / "train_state.json").read_text())
        assert state["reason"] == "signal"
        (out / "summary.json").unlink()
    run_to_end(torchrun(29551, *args(out, "--resume", "latest")))
    assert_same_run(out, ref)


@pytest.mark.slow
def test_the_sbatch_templates_forward_usr1_to_the_ranks_and_requeue(world, tmp_path):
    """examples/slurm/requeue.sh under a stand-in `srun` (runs the one task itself) and `scontrol`
    (records its arguments): SIGUSR1 to the batch script alone, as `--signal=B:USR1@120` sends it,
    reaches the rank, which checkpoints and exits 143; the script requeues the job and exits 143;
    the requeued script resumes with `--resume latest` and ends equal to an uninterrupted run."""
    import subprocess
    import sys
    from pathlib import Path

    root, data, _ = world
    repo = Path(__file__).resolve().parents[2]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexport SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\n[ "$1" = show ] && {{ echo localhost; exit 0; }}\n'
                                      f'echo "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')  # this environment's python
    for f in ("srun", "scontrol", "python"):
        (bin_dir / f).chmod(0o755)
    ref, out = tmp_path / "ref", tmp_path / "run"
    with one_thread():
        run_stage1(_stage_args("pretrain", data, None, ref))
    job = tmp_path / "job.sbatch"
    job.write_text("#!/bin/bash\nsource \"$MMKD_SLURM/requeue.sh\"\nrun_ranks python -m mmkd pretrain "
                   + " ".join(_stage_args("pretrain", data, None, out, "--resume", "latest")) + "\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MMKD_SLURM": str(repo / "examples" / "slurm"),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["bash", str(job)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert wait_until(lambda: latest_step(out) >= 2 or proc.poll() is not None, timeout=300)
    assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGUSR1)  # the batch script only
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 143, log[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["signal"] == "SIGUSR1" and summary["num_steps"] < 16
    (out / "summary.json").unlink()
    again = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # not requeued again
    assert_same_run(out, ref)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_to_one_extraction_rank_stops_every_rank_and_the_rerun_completes(world, tmp_path):
    """SIGUSR1 to rank 1 of a 2-rank torchrun extract: no rank finishes the store (rank 0 would otherwise
    find rank 1's chunks missing); the rerun gives the store one process extracts."""
    import subprocess

    from helpers import assert_same_store
    from mmkd.teachers.testing import make_open_clip_teacher
    from test_kill_rank import rank_pid, run_to_end, torchrun

    root, data, _ = world
    teacher = make_open_clip_teacher(tmp_path / "t", seed=3)

    def args(out):
        return ["extract", "--data", str(data), "--out", str(out), "--teacher", f"a=local-dir:{teacher}",
                "--chunk-rows", "4", "--batch-size", "2", "--workers", "2", "--no-progress"]

    ref, out = tmp_path / "ref", tmp_path / "store"
    assert _cli(args(ref)) == 0
    chunks = out / "teachers" / "a" / "chunks"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKD_TEST_COMMIT_DELAY_S": "0.3"}
    proc = subprocess.Popen(torchrun(29553, *args(out)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_until(lambda: chunks.is_dir() and len(list(chunks.iterdir())) >= 2 or proc.poll() is not None,
                      timeout=300)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.kill(rank_pid(proc.pid, 1), signal.SIGUSR1)
    assert proc.wait(timeout=300) != 0
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert "stopped by SIGUSR1" in stderr and "cannot finish the store" not in stderr, stderr[-3000:]
    assert not json.loads((out / "manifest.json").read_text()).get("complete")
    run_to_end(torchrun(29553, *args(out)))
    assert_same_store(out, ref, check_summary=True)
