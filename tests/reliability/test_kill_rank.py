"""Kill one rank of a 2-process torchrun job (SIGKILL): the job stops, and the rerun (extract) or the
resume (pretrain, distill) ends equal to the uninterrupted 2-process run, array by array.

Slow: each case starts torchrun three times (reference, killed run, rerun)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_same_store
from rel_helpers import assert_same_run, latest_step, make_pairs, report, stage1_args, stage2_args, write_store

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
FIGURES: dict[str, int] = {"jobs_killed": 0, "jobs_stopped": 0, "reruns_equal_to_uninterrupted": 0}


def torchrun(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "mmkd", *args]


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of `rank` started by the torchrun process `launcher` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def kill_rank_when(cmd: list[str], ready, rank: int = 1) -> int:
    """Start the job, SIGKILL worker `rank` once `ready()`; returns the launcher's exit code."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before the kill: " + proc.stderr.read().decode()[-2000:]
    pid = rank_pid(proc.pid, rank)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    FIGURES["jobs_killed"] += 1
    code = proc.wait(timeout=300)  # the job stops: torchrun tears the other rank down
    proc.stderr.close()
    assert code != 0
    FIGURES["jobs_stopped"] += 1
    return code


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill-rank")
    data = make_pairs(root / "data", n=32)
    return root, data, write_store(data, root / "store")


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_kill_one_training_rank_then_resume_equals_the_uninterrupted_run(world, tmp_path, stage):
    root, data, store = world
    port = 29541 if stage == "pretrain" else 29543

    def args(out, *extra):
        base = stage1_args(data, out, "--epochs", "4") if stage == "pretrain" else \
            stage2_args(data, store, out, "--epochs", "4")
        return [stage, *base, *extra]

    ref, out = tmp_path / "ref", tmp_path / "run"
    run_to_end(torchrun(port, *args(ref)))
    kill_rank_when(torchrun(port, *args(out)), lambda: latest_step(out) >= 3)
    assert not (out / "summary.json").exists()
    run_to_end(torchrun(port, *args(out, "--resume", "latest")))
    assert_same_run(out, ref)
    FIGURES["reruns_equal_to_uninterrupted"] += 1


def test_kill_one_extraction_rank_then_rerun_equals_the_uninterrupted_store(world, tmp_path, capsys):
    from mmkd.teachers.testing import make_open_clip_teacher

    root, data, _ = world
    teacher = make_open_clip_teacher(tmp_path / "t", seed=3)

    def args(out):
        return ["extract", "--data", str(data), "--out", str(out), "--teacher", f"a=local-dir:{teacher}",
                "--chunk-rows", "4", "--batch-size", "2", "--no-progress"]

    ref, out = tmp_path / "ref", tmp_path / "store"
    run_to_end(torchrun(29545, *args(ref)))
    chunks = out / "teachers" / "a" / "chunks"
    env_delay = {"MMKD_TEST_COMMIT_DELAY_S": "0.3"}  # keeps the job running past the first commits
    os.environ.update(env_delay)
    try:
        kill_rank_when(torchrun(29545, *args(out)), lambda: chunks.is_dir() and len(list(chunks.iterdir())) >= 2)
    finally:
        os.environ.pop("MMKD_TEST_COMMIT_DELAY_S")
    run_to_end(torchrun(29545, *args(out)))
    assert_same_store(out, ref, check_summary=True)
    FIGURES["reruns_equal_to_uninterrupted"] += 1
    report(capsys, "kill-one-rank campaign (torchrun, 2 processes)", **FIGURES)
