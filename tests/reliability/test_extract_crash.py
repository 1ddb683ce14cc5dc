"""Feature extraction under SIGKILL and write errors: the rerun's store equals an uninterrupted
run's, array by array, and an unfinished store never opens as complete.

Kills hit a forked extraction at random moments; with the test hook MMKD_TEST_COMMIT_DELAY_S
some land between a chunk's rows reaching the disk and its commit record. Write errors come
from MMKD_TEST_ENOSPC_AT_WRITE (the Nth atomic write fails with ENOSPC) and from a real,
tiny tmpfs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmkd.data.feature_store import FeatureStore
from mmkd.data.pairs import index_source
from mmkd.errors import UsageError
from mmkd.teachers import load_teacher
from mmkd.teachers.extract import ExtractOptions, extract_features
from mmkd.teachers.testing import make_open_clip_teacher, make_pairs_csv
from helpers import assert_same_store as _same_store
from rel_helpers import fork, kill_when, one_thread, report, wait_until

KINDS = ("image", "text", "available", "score")
OPTIONS = dict(chunk_rows=4, batch_size=3, candidates=4, progress=False)
NUM_CHUNKS = 8  # 30 samples / 4 rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract-crash")
    csv = make_pairs_csv(root / "data", num_samples=30, broken=(5, 18))
    teachers = {"a": load_teacher(f"local-dir:{make_open_clip_teacher(root / 'oc', seed=3)}", name="a"),
                "b": load_teacher(f"local-dir:{make_open_clip_teacher(root / 'oc2', seed=4, embed_dim=24, image_size=24)}",
                                  name="b")}
    records, _ = index_source(str(csv))
    with one_thread():
        extract_features(records, teachers, str(root / "reference"), ExtractOptions(**OPTIONS))
    return {"root": root, "records": records, "teachers": teachers, "reference": root / "reference", "csv": csv}


def extract(world, out) -> dict:
    return extract_features(world["records"], world["teachers"], str(out), ExtractOptions(**OPTIONS))


def committed(out: Path) -> int:
    return sum(len(list((out / "teachers" / t / "chunks").glob("*.json")))
               for t in ("a", "b") if (out / "teachers" / t / "chunks").is_dir())


def kill_campaign(world, out: Path, kills: int, rng: random.Random, delay_s: float) -> dict:
    """Kill a forked extraction `kills` times after a random number of commits (+ a random delay),
    then finish it in-process."""
    figures = {"kills": 0, "kills_before_any_commit": 0, "finished_before_kill": 0}
    for _ in range(kills):
        target = rng.randint(0, 2 * NUM_CHUNKS - 1)
        proc = fork(extract, world, out, env={"MMKD_TEST_COMMIT_DELAY_S": str(delay_s)})
        if not kill_when(proc, lambda: committed(out) >= target, rng.uniform(0, 2 * delay_s + 0.05)):
            figures["finished_before_kill"] += 1
            continue
        figures["kills"] += 1
        figures["kills_before_any_commit"] += committed(out) == 0
        if (out / "manifest.json").is_file():
            with pytest.raises(UsageError, match="incomplete"):
                FeatureStore(out)
    with one_thread():
        extract(world, out)
    _same_store_full(out, world["reference"])
    return figures


def test_sigkill_inside_the_commit_window_then_rerun(world, tmp_path):
    out = tmp_path / "store"
    proc = fork(extract, world, out, env={"MMKD_TEST_COMMIT_DELAY_S": "0.5"})
    assert wait_until(lambda: committed(out) >= 3, proc)
    time.sleep(0.25)  # inside the next chunk's delay: its rows are on disk, its record is not
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    with pytest.raises(UsageError, match="incomplete"):
        FeatureStore(out)
    with one_thread():
        extract(world, out)
    _same_store_full(out, world["reference"])


# writes of this extraction: 1 sample_ids.json, 2 manifest, 3..18 chunk records, 19 final manifest
@pytest.mark.parametrize("write", [1, 2, 9, 19])
def test_write_error_at_each_kind_of_write_then_rerun(world, tmp_path, monkeypatch, write):
    out = tmp_path / "store"
    monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"{write}:{tmp_path.name}")
    with pytest.raises(UsageError, match="No space left on device") as err, one_thread():
        extract(world, out)
    assert "rerun the same command" in str(err.value)
    if (out / "manifest.json").is_file():
        with pytest.raises(UsageError, match="incomplete"):
            FeatureStore(out)
    assert not list(out.rglob(".*.tmp")), "a failed write left its temporary file"
    monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
    with one_thread():
        extract(world, out)
    _same_store_full(out, world["reference"])


def test_rerun_of_an_interrupted_extraction_with_fewer_teachers_is_refused(world, tmp_path, monkeypatch, capsys):
    """An extraction of teachers a and b stopped after three chunks of each; a rerun naming only a is refused
    (exit 2, naming b and the fix) before it writes anything, and the rerun with both finishes the store."""
    from mmkd.cli import main

    out = tmp_path / "store"
    cli = ["extract", "--data", str(world["csv"]), "--out", str(out), "--chunk-rows", "4", "--batch-size", "3",
           "--candidates", "4", "--no-progress", "--teacher", f"a=local-dir:{world['root'] / 'oc'}"]
    both = [*cli, "--teacher", f"b=local-dir:{world['root'] / 'oc2'}"]
    monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"9:{tmp_path.name}")  # the commit of chunk 3 of a
    with one_thread():
        assert main(both) == 1
    monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
    capsys.readouterr()
    def files() -> dict[Path, bytes]:  # the store's own files (the writer lock records who held it last)
        return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mmkd.lock"}

    before = files()
    with one_thread():
        assert main(cli) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "'b' (5 of 8 chunks)" in err and "--teacher" in err, err
    assert files() == before
    with one_thread():
        assert main(both) == 0
    _same_store_full(out, world["reference"])


def _mount_tmpfs(mnt: Path, size: str) -> bool:
    mnt.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_is_refused_before_any_row_then_resumed(world, tmp_path):
    """On a 64 KiB tmpfs the arrays do not fit: the writer reserves their space up front, so the
    error is a message (not a SIGBUS from a memmap write); with room, the same command finishes."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "64k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = fork(extract, world, mnt / "store")  # a child: a SIGBUS would not take pytest down
        proc.join(timeout=300)
        assert proc.exitcode == 1, f"exit code {proc.exitcode} (-7 is SIGBUS)"
        with pytest.raises(UsageError, match="No space left on device"), one_thread():
            extract(world, mnt / "store")
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        with one_thread():
            extract(world, mnt / "store")
        _same_store_full(mnt / "store", world["reference"])
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_campaign_random_sigkills(world, tmp_path_factory, capsys):
    rng = random.Random(99)
    totals = {"runs": 0, "kills": 0, "kills_before_any_commit": 0, "finished_before_kill": 0}
    for trial in range(6):
        out = tmp_path_factory.mktemp(f"extract-campaign-{trial}") / "store"
        figures = kill_campaign(world, out, kills=5, rng=rng, delay_s=rng.choice([0.0, 0.05, 0.2]))
        totals["runs"] += 1
        for k, v in figures.items():
            totals[k] += v
    report(capsys, "extraction SIGKILL campaign", **totals, stores_equal_to_uninterrupted=totals["runs"])
    assert totals["kills"] >= 20


@pytest.mark.slow
def test_campaign_write_error_at_every_write(world, tmp_path_factory, capsys, monkeypatch):
    failed = 0
    for write in range(1, 20):
        out = tmp_path_factory.mktemp(f"enospc-{write}") / "store"
        monkeypatch.setenv("MMKD_TEST_ENOSPC_AT_WRITE", f"{write}:campaign")
        with pytest.raises(UsageError, match="No space left on device"), one_thread():
            extract(world, out)
        failed += 1
        monkeypatch.delenv("MMKD_TEST_ENOSPC_AT_WRITE")
        with one_thread():
            extract(world, out)
        _same_store_full(out, world["reference"])
    report(capsys, "extraction write-error campaign", writes_failed=failed, stores_equal_to_uninterrupted=failed)


def _same_store_full(path: Path, ref_path: Path) -> None:
    _same_store(path, ref_path, KINDS, check_summary=True)
