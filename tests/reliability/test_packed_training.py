"""Training and extraction on packed shards (`mmkd data pack`): the same samples in the same order as
on the originals, stores of the two told apart, shard-ordered reading that covers every sample once
per epoch across ranks and workers, and a killed run that resumes to the uninterrupted run's weights.

Originals are BIOMEDICA-shaped shards written here (tests/helpers.write_originals); runs are real
CLI runs, in-process or in forked children, and real 2-process torchrun (gloo).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port, write_originals
from shard_order_worker import OPEN_SHARDS
from mmkd.cli import main
from rel_helpers import (_child, assert_same_run, cli, kill_when, latest_step, one_thread, run_stage1, stage1_args,
                         stage2_args, wait_until)

SHARDS = {"commercial/000000": 9, "commercial/000001": 7, "commercial/000002": 8, "other/000000": 8}  # 32
WORKER = Path(__file__).resolve().parents[1] / "shard_order_worker.py"


@pytest.fixture(scope="module")
def packed_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed-world")
    originals = write_originals(root / "originals", SHARDS)
    with one_thread():
        assert main(["data", "pack", str(originals), "--out", str(root / "packed"), "--size", "64",
                     "--no-progress"]) == 0
    return originals, root / "packed"


def _unlocked(path: Path) -> bool:
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


@pytest.mark.slow
def test_pack_extract_distill_matches_the_originals_and_their_stores_are_told_apart(packed_world, tmp_path,
                                                                                    capsys):
    from mmkd.config import DataConfig
    from mmkd.data.feature_store import FeatureStore
    from mmkd.data.loader import batch_sampler
    from mmkd.data.pairs import index_source
    from mmkd.teachers.testing import make_open_clip_teacher

    originals, packed = packed_world
    teacher = f"a=local-dir:{make_open_clip_teacher(tmp_path / 'teacher', seed=3)}"
    stores = {}
    for name, data in (("orig", originals), ("packed", packed)):
        stores[name] = tmp_path / f"store-{name}"
        code, out = cli(capsys, "extract", "--data", data, "--teacher", teacher, "--out", stores[name],
                        "--no-progress")
        assert code == 0, out
    assert FeatureStore(stores["orig"]).sample_ids == FeatureStore(stores["packed"]).sample_ids
    # the same order rules: the training sampler lays out both sources' batches identically
    for rank in (0, 1):
        layouts = []
        for data in (originals, packed):
            records, _ = index_source(str(data), progress=False)
            sampler = batch_sampler(records, 8, rank, 2, 5, DataConfig(path=str(data), num_workers=2))
            sampler.set_position(1)
            layouts.append([[records[i].sample_id for i in b] for b in sampler])
        assert layouts[0] == layouts[1] and len(layouts[0]) == 4
    runs = {}
    for name, data in (("orig", originals), ("packed", packed)):
        runs[name] = tmp_path / f"run-{name}"
        code, out = cli(capsys, "distill", *stage2_args(data, stores[name], runs[name], "--data.num_workers", "2"))
        assert code == 0, out
    a, b = (json.loads((runs[n] / "summary.json").read_text()) for n in ("orig", "packed"))
    for key in ("num_steps", "num_samples_seen", "num_skipped_samples"):
        assert a[key] == b[key], key
    assert a["num_samples_seen"] == 64 and not a["num_skipped_samples"]
    # a packed store and an original store are never taken for each other
    code, out = cli(capsys, "distill", *stage2_args(packed, stores["orig"], tmp_path / "x1"))
    assert code == 2 and "packed copies" in out and "the images the store was made from" in out, out
    code, out = cli(capsys, "distill", *stage2_args(originals, stores["packed"], tmp_path / "x2"))
    assert code == 2 and "mmkd data pack" in out and "Traceback" not in out, out


@pytest.mark.slow
def test_shard_ordered_reading_covers_every_sample_once_per_epoch_under_torchrun(packed_world, tmp_path):
    _, packed = packed_world
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), str(WORKER), str(packed), str(tmp_path)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    from mmkd.data.pairs import index_source

    every = sorted(index_source(str(packed), progress=False)[0].sample_ids)
    orders = []
    for epoch in (0, 1):
        ids = [sid for rank in ranks for _, batch in rank[epoch] for sid in batch]
        assert sorted(ids) == every, epoch  # 32 samples = 4 batches of 4 per rank: each read exactly once
        orders.append(ids)
        for rank in ranks:
            for worker in (0, 1):  # each worker has at most OPEN_SHARDS shards begun and not finished at a time
                shards = [sid.rsplit("/", 1)[0] for w, batch in rank[epoch] if w == worker for sid in batch]
                first = {s: shards.index(s) for s in shards}
                last = {s: len(shards) - 1 - shards[::-1].index(s) for s in shards}
                for pos in range(len(shards)):
                    assert sum(first[s] <= pos <= last[s] for s in first) <= OPEN_SHARDS, shards
    assert orders[0] != orders[1]


@pytest.mark.slow
def test_a_killed_run_on_packed_shards_resumes_to_the_uninterrupted_weights(packed_world, tmp_path):
    _, packed = packed_world
    extra = ("--data.num_workers", "2", "--data.shuffle_buffer", "4")
    with one_thread():
        run_stage1(stage1_args(packed, tmp_path / "ref", *extra))
    out = tmp_path / "run"
    # not a daemon (as rel_helpers.fork makes): the run starts loader workers of its own
    proc = multiprocessing.get_context("fork").Process(target=_child,
                                                       args=(run_stage1, (stage1_args(packed, out, *extra),), {}))
    proc.start()
    assert kill_when(proc, lambda: latest_step(out) >= 3)  # mid-epoch: 4 steps per epoch
    # its loader workers hold the run's lock until they notice (within seconds) that their parent died
    assert wait_until(lambda: _unlocked(out / ".mmkd.lock"), timeout=60)
    with one_thread():
        summary = run_stage1(stage1_args(packed, out, *extra, "--resume", "latest"))
    assert summary["completed"] and summary["num_steps"] == 8
    assert_same_run(out, tmp_path / "ref")
