"""The persistent data index: tar listing against `tarfile`, refreshing only a changed shard, metadata
selection against a brute-force pass over the JSONs, saved selections in pretrain/extract/distill,
damaged members and JSON counted by reason, and the CSV reader (offsets, BOM, long captions,
duplicate ids)."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmkd.cli import main
from mmkd.config import build_config
from mmkd.data.index_build import ensure_index, make_plan, resolve_source
from mmkd.data.pairs import PairDataset, Skip, index_source, read_caption, read_table
from mmkd.data.select import SELECTION_FILE
from mmkd.data.tarscan import list_members
from mmkd.errors import UsageError
from mmkd.synth.biomedica import write_shards


def _png(color=(200, 30, 30), size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


# ---- tar listing ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_listing_equals_tarfile(tmp_path, fmt):
    path = tmp_path / "s.tar"
    names = ["a.jpg", "a.txt", "dir/b.json", "x" * 40 + "/" + "y" * 80 + ".txt"]
    if fmt != tarfile.USTAR_FORMAT:
        names += ["k" * 150 + ".json", "bild-ä-ø.txt"]  # a long and a non-ASCII name
    with tarfile.open(path, "w", format=fmt) as tf:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for i, name in enumerate(names):
            _add(tf, name, bytes([i]) * (37 * i + 1))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tf.addfile(link)
    with tarfile.open(path) as tf:
        expected = [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]
    listing = list_members(str(path))
    assert list(zip(listing.names, listing.offsets, listing.sizes)) == expected and not listing.damaged


def test_damaged_tar_keeps_members_before_the_damage(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(4):
            _add(tf, f"{i}.txt", b"x" * 700)
    with tarfile.open(path) as tf:
        fourth = tf.getmembers()[3].offset
    data = bytearray(path.read_bytes())
    data[fourth + 10] ^= 0xFF  # a flipped byte in the 4th header: its checksum fails
    path.write_bytes(bytes(data))
    listing = list_members(str(path))
    assert listing.names == ["0.txt", "1.txt", "2.txt"] and listing.damaged


# ---- refreshing only what changed -------------------------------------------------------------
def _decoded(index) -> dict:
    """Everything an index says about its samples, in terms that do not depend on code numbering."""
    rows = range(index.num_samples)
    return {"ids": list(index.iter_sample_ids()),
            "members": [tuple(index.members[r].tolist()) for r in rows],
            "fields": {f: [index.values_of(f, r) for r in rows] for f in index.fields}}


def test_only_a_changed_or_added_shard_is_reindexed(tmp_path, capsys):
    data = tmp_path / "shards"
    write_shards(data, 60, per_shard=20, flat=True, seed=1)
    source = resolve_source(str(data), "webdataset")
    first = ensure_index(source, workers=1, progress=True)
    assert first.num_samples == 60 and "new index" in capsys.readouterr().err
    assert make_plan(resolve_source(str(data), "webdataset")) is None  # nothing changed: nothing to do

    # rewrite shard 1 with other samples (a different count), and add a shard
    other = write_shards(tmp_path / "other", 25, per_shard=25, flat=True, seed=7)[0]
    os.replace(other, data / "000001.tar")
    extra = write_shards(tmp_path / "more", 10, per_shard=10, flat=True, seed=9)[0]
    os.replace(extra, data / "000003.tar")
    plan = make_plan(resolve_source(str(data), "webdataset"))
    assert plan["todo"] == [1, 3] and [s["old"] for s in plan["shards"]] == [0, None, 2, None]
    updated = ensure_index(resolve_source(str(data), "webdataset"), workers=1, progress=True)
    assert "2 new or changed shard(s)" in capsys.readouterr().err
    assert updated.num_samples == 20 + 25 + 20 + 10 and updated.generation != first.generation
    # the old generation is retired, kept while this process (which opened it) may still read it
    assert (source.index_dir / first.generation / ".retired").exists()
    assert sorted(p.name for p in data.iterdir()) == [f"00000{i}.tar" for i in (0, 1, 2, 3)]  # data folder untouched

    scratch = ensure_index(resolve_source(str(data), "webdataset", index_dir=str(tmp_path / "scratch")), workers=2,
                           progress=False)
    assert _decoded(updated) == _decoded(scratch)
    with tarfile.open(data / "000001.tar") as tf:  # the rewritten shard's samples are the new ones
        keys = list(dict.fromkeys(m.name.split(".")[0] for m in tf))
    assert [updated.sample_id(r) for r in range(20, 45)] == [f"000001/{k}" for k in keys]

    (data / "000000.tar").unlink()  # a removed shard: no scan, its rows go
    plan = make_plan(resolve_source(str(data), "webdataset"))
    assert plan["todo"] == [] and len(plan["shards"]) == 3
    assert ensure_index(resolve_source(str(data), "webdataset"), progress=False).num_samples == 55


def _index_then_add_a_shard(tmp_path: Path, read_epoch) -> tuple:
    """Index 2 shards, read an epoch, add a shard and rebuild, read the next epoch; both epochs' ids."""
    data = tmp_path / "shards"
    write_shards(data, 40, per_shard=20, flat=True, seed=1)
    index = ensure_index(resolve_source(str(data), "webdataset"), workers=1, progress=False)
    first = read_epoch(index)
    os.replace(write_shards(tmp_path / "more", 10, per_shard=10, flat=True, seed=9)[0], data / "000002.tar")
    rebuilt = ensure_index(resolve_source(str(data), "webdataset"), workers=1, progress=False)
    assert rebuilt.num_samples == 50 and rebuilt.generation != index.generation
    return data, index, rebuilt, first, read_epoch(index)


@pytest.mark.slow  # two epochs of spawn workers (each imports torch): ~20 s here
def test_a_rebuild_keeps_the_generation_a_spawn_loader_reopens_at_the_next_epoch(tmp_path):
    """A shard is added and the index rebuilt while a DataLoader with spawn workers is between epochs: the
    next epoch's new workers reopen the generation the run started on and read the same samples."""
    import torch

    from mmkd.data.index import IndexedRecords

    loaders: dict = {}

    def read_epoch(index):
        loader = loaders.setdefault("run", torch.utils.data.DataLoader(
            IndexedRecords(index), batch_size=None, num_workers=1, multiprocessing_context="spawn"))
        return [r.sample_id for r in loader]

    _, _, _, first, second = _index_then_add_a_shard(tmp_path, read_epoch)
    assert len(first) == 40 and second == first


def test_a_replaced_generation_lives_while_a_process_may_open_it(tmp_path, monkeypatch):
    """After a rebuild, the replaced generation still opens (as a spawned worker reopens it, by unpickling
    the records); it is removed only once no live process holds a lease on it and its grace period is over."""
    import pickle
    import subprocess
    import sys

    from mmkd.data import index_build
    from mmkd.data.index import IndexedRecords

    def read_epoch(index):
        records = pickle.loads(pickle.dumps(IndexedRecords(index)))  # what a spawn worker receives
        return [records[i].sample_id for i in range(len(records))]

    data, index, rebuilt, first, second = _index_then_add_a_shard(tmp_path, read_epoch)
    assert len(first) == 40 and second == first

    leases = index.folder / "leases"
    old = index.folder / index.generation
    monkeypatch.setattr(index_build, "RETIRED_GRACE_S", 0.0)
    ensure_index(resolve_source(str(data), "webdataset"), progress=False)
    assert old.is_dir()  # this process holds a live lease on it
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for lease in leases.glob(f"{index.generation}@*"):  # the run ends; a process that has exited leased it too
        host = lease.name.rsplit("@", 2)[1]
        lease.unlink()
    (leases / f"{index.generation}@{host}@{int(ended.stdout)}").touch()
    ensure_index(resolve_source(str(data), "webdataset"), progress=False)
    assert not old.exists() and not list(leases.glob(f"{index.generation}@*"))
    assert (index.folder / rebuilt.generation).is_dir()


@pytest.mark.slow  # one launch holds the index lock for 40 s
@pytest.mark.distributed
def test_two_launches_sharing_an_index_finish_under_a_30_s_process_group_timeout(tmp_path):
    """Launch 1's rank 0 holds the index lock for 40 s (as a long build would); launch 2 starts meanwhile.
    Its rank 0 waits for the lock and its rank 1 for rank 0's plan, both on the filesystem, so neither
    launch's 30-s process-group timeout fires; both finish on the same index."""
    import subprocess
    import sys
    import time

    data = tmp_path / "shards"
    write_shards(data, 30, per_shard=10, flat=True, seed=2)
    worker = Path(__file__).parent / "index_launch_worker.py"

    def launch(n: int, port: int, hold: str) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKD_TEST_INDEX_LOCK_HOLD_S": hold}
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", str(port), str(worker), str(data), str(tmp_path / "index"),
                                 str(tmp_path / f"launch{n}.json")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    first = launch(1, 29571, "40")
    deadline = time.time() + 120
    while not (tmp_path / "index" / ".lock").is_file() or not (tmp_path / "index" / ".lock").read_text():
        assert first.poll() is None and time.time() < deadline, first.stdout.read() if first.stdout else ""
        time.sleep(0.2)
    second = launch(2, 29573, "0")
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "waiting for the index lock" in outputs[1] and "held by pid" in outputs[1]
    results = [json.loads((tmp_path / f"launch{n}.json").read_text()) for n in (1, 2)]
    assert results[0] == results[1] and results[0]["samples"] == 2 * 30


# ---- selection against a brute-force pass over the JSONs ---------------------------------------
def _brute_force(root: Path, primaries: set[str], modality_values: set[str] | None, groups: set[str]):
    """Counts per modality and licence of the samples chosen, read with tarfile and json."""
    by_modality, by_license = Counter(), Counter()
    for shard in sorted(root.rglob("*.tar")):
        subset = shard.parent.name
        with tarfile.open(shard) as tf:
            for m in tf:
                if not m.name.endswith(".json"):
                    continue
                meta = json.load(tf.extractfile(m))
                if subset not in groups or not primaries & set(meta["image_primary_label"]):
                    continue
                secondary = meta["image_secondary_label"]
                chosen = [v for v in secondary if modality_values is None or v in modality_values]
                if not chosen:
                    continue
                by_modality[chosen[0]] += 1
                by_license[subset] += 1
    return by_modality, by_license


def test_selection_counts_equal_a_brute_force_pass(tmp_path, capsys):
    data = tmp_path / "biomedica"
    write_shards(data, 900, per_shard=100, seed=3)  # commercial/, noncommercial/, other/
    out = tmp_path / "sel"
    assert main(["data", "select", "--data", str(data), "--select", "image_primary_label=Clinical Imaging,Microscopy",
                 "--modality-key", "image_secondary_label", "--license", "noncommercial", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / SELECTION_FILE).read_text())
    by_modality, by_license = _brute_force(data, {"Clinical Imaging", "Microscopy"}, None,
                                           {"commercial", "noncommercial"})
    assert meta["counts"]["by_modality"] == dict(by_modality) and meta["counts"]["by_license"] == dict(by_license)
    assert meta["num_samples"] == sum(by_modality.values()) and "electron microscopy" in printed

    # a YAML recipe of secondary labels: the modality is the first listed value a sample has
    recipe = tmp_path / "recipe.yaml"
    wanted = ["computerized tomography", "immunohistochemistry", "fluorescence microscopy", "endoscopy"]
    recipe.write_text("image_secondary_label:\n" + "".join(f"  - {v}\n" for v in wanted)
                      + "image_primary_label: [Clinical Imaging, Microscopy]\n")
    records, _ = index_source(str(data), modality_key="image_secondary_label", select=[str(recipe)],
                              license="commercial", progress=False)
    by_modality, by_license = _brute_force(data, {"Clinical Imaging", "Microscopy"}, set(wanted), {"commercial"})
    assert Counter(r.modality for r in records) == by_modality and len(records) == sum(by_license.values())


def test_csv_selection_and_config_clauses(tmp_path):
    rows = [("img/a.png", f"caption {i}", f"s{i}", ("ct", "mri", "x-ray")[i % 3]) for i in range(30)]
    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "sample_id", "modality"])
        w.writerows(rows)
    cfg = build_config(None, ["--data", str(table), "--data.select", "modality=ct,x-ray", "--data.select",
                              "sample_id=s0,s1,s2,s3,s4,s5"])
    assert cfg.data.select == ["modality=ct,x-ray", "sample_id=s0,s1,s2,s3,s4,s5"]
    dataset, _ = PairDataset.from_config(cfg.data)
    assert [r.sample_id for r in dataset.records] == ["s0", "s2", "s3", "s5"]
    assert [r.modality for r in dataset.records] == ["ct", "x-ray", "ct", "x-ray"]
    with pytest.raises(UsageError, match="FIELD=V1,V2"):
        index_source(str(table), select=["modality"])


# ---- a saved selection in pretrain, extract and distill ----------------------------------------
def test_a_selection_gives_the_same_samples_to_pretrain_extract_and_distill(tmp_path, capsys):
    from mmkd.data.feature_store import FeatureStore
    from mmkd.data.pairs import records_from_config
    from mmkd.teachers.testing import make_open_clip_teacher

    data = tmp_path / "biomedica"
    write_shards(data, 48, per_shard=8, seed=5, image_bytes=_png())
    subset = tmp_path / "subset"
    assert main(["data", "select", "--data", str(data), "--license", "commercial", "--select",
                 "image_panel_type=single,multiple", "--modality-key", "image_secondary_label", "--out", str(subset),
                 "--no-progress"]) == 0
    chosen = json.loads((subset / SELECTION_FILE).read_text())["num_samples"]
    assert chosen == 16  # shards 0 and 3 of the 6 (8 samples each) hold the commercial samples
    teacher = make_open_clip_teacher(tmp_path / "t", seed=1)
    store = tmp_path / "store"
    assert main(["extract", "--data", str(subset), "--teacher", f"t=local-dir:{teacher}", "--out", str(store),
                 "--chunk-rows", "8", "--no-progress"]) == 0
    common = ["--data", str(subset), "--batch-size", "8", "--epochs", "1", "--train.progress", "false",
              "--train.device", "cpu"]
    assert main(["pretrain", *common, "--out", str(tmp_path / "s1"), "--lr", "1e-3"]) == 0
    assert main(["distill", *common, "--store", str(store), "--init", str(tmp_path / "s1"), "--out",
                 str(tmp_path / "s2"), "--distill.target_space", "adaptor"]) == 0
    capsys.readouterr()

    ids = FeatureStore(store).sample_ids
    assert len(ids) == chosen and all(i.startswith("commercial/") for i in ids)
    for stage in ("pretrain", "distill"):
        cfg = build_config(None, [*common, "--store", str(store)], stage=stage)
        records, _ = records_from_config(cfg.data)
        assert list(records.sample_ids) == ids
        assert {r.modality for r in records} <= {"computerized tomography", "x-ray radiography", "ultrasound",
                                                  "magnetic resonance", "endoscopy", "surgical procedure",
                                                  "skin lesion", "optical coherence tomography", "angiography",
                                                  "intraoral imaging", "clinical imaging", "light microscopy",
                                                  "fluorescence microscopy", "electron microscopy",
                                                  "confocal microscopy", "microscopy", "bar plot", "line plot",
                                                  "diagram", "chemical structure", "immunoblot", "table"}
    for run in ("s1", "s2"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["num_samples_seen"] == chosen and summary["num_skipped_total"] == 0


def test_a_selection_is_refused_when_its_samples_changed(tmp_path):
    data = tmp_path / "shards"
    write_shards(data, 40, per_shard=20, flat=True, seed=2)
    subset = tmp_path / "sel"
    assert main(["data", "select", "--data", str(data), "--select", "image_primary_label=Microscopy", "--out",
                 str(subset), "--no-progress"]) == 0
    before = list(index_source(str(subset), progress=False)[0].sample_ids)
    os.utime(data / "000000.tar", ns=(1, 1))  # touched, same content: re-indexed, same samples chosen
    assert list(index_source(str(subset), progress=False)[0].sample_ids) == before
    os.replace(write_shards(tmp_path / "o", 20, per_shard=20, flat=True, seed=8)[0], data / "000000.tar")
    with pytest.raises(UsageError, match="no longer matches"):
        index_source(str(subset), progress=False)


# ---- damaged members and JSON are still skipped and counted by reason ---------------------------
def test_damaged_members_and_json_are_skipped_and_counted(tmp_path, capsys):
    good = _png()
    shard = tmp_path / "shards" / "000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tf:
        _add(tf, "a.png", good)
        _add(tf, "a.txt", b"a good sample")
        _add(tf, "a.json", json.dumps({"image_primary_label": ["Microscopy"]}).encode())
        _add(tf, "b.png", good)
        _add(tf, "b.json", b'{"caption": "cut short')  # the caption source is broken JSON
        _add(tf, "c.png", good)
        _add(tf, "c.txt", b"caption of c")
        _add(tf, "c.json", b"not json at all")  # only the metadata is broken: c stays readable
        _add(tf, "d.png", good)
        _add(tf, "d.txt", "légende".encode("latin-1"))
        _add(tf, "e.txt", b"the last one")
        _add(tf, "e.png", good + bytes(2048))
    data = shard.read_bytes()
    shard.write_bytes(data[:data.rfind(b"\x89PNG") + 100])  # cut inside e.png
    records, problems = index_source(str(shard.parent), progress=False)
    reasons = Counter(it.reason if isinstance(it, Skip) else "ok" for it in PairDataset(records))
    assert reasons == Counter({"ok": 2, "bad_tar_member": 2, "bad_caption_encoding": 1})
    assert problems == Counter({"bad_tar_member": 1})  # one damaged shard
    assert main(["data", "index", "--data", str(shard.parent), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["damaged_shards"] == 1 and summary["unreadable_json"] == 2 and summary["num_samples"] == 5


# ---- CSV / JSONL ------------------------------------------------------------------------------
def test_table_records_are_read_by_offset_and_match_the_csv_module(tmp_path):
    text = ('image,caption,sample_id,modality\r\n'
            'a.png,"two\r\nlines, and a comma",s1,ct\r\n'
            '\r\n'
            'b.png,"a ""quoted"" word",s2,mri\r\n'
            'c.png,plain,s3,\r\n')
    table = tmp_path / "t.csv"
    table.write_bytes(text.encode())
    records, _ = index_source(str(table), progress=False)
    expected = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [(r.sample_id, r.caption, r.modality, Path(r.image).name) for r in records] == \
        [(e["sample_id"], e["caption"], e["modality"], e["image"]) for e in expected]
    lines = [{"image": "a.png", "caption": "über", "sample_id": 7}, {"image": "b.png", "caption": "x"}]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records, _ = index_source(str(jsonl), progress=False)
    assert [(r.sample_id, r.caption) for r in records] == [("7", "über"), ("1", "x")]


def test_bom_csv_is_read(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    table = tmp_path / "bom.csv"
    table.write_bytes(b"\xef\xbb\xbfimage,caption\na.png,a red square\n")
    records, _ = index_source(str(table), progress=False)
    assert read_caption(records[0]) == "a red square" and Path(records[0].image).name == "a.png"
    assert read_table(table, "csv") == [{"image": "a.png", "caption": "a red square"}]


def test_caption_over_128_kib_is_a_counted_skip_not_a_traceback(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(16):
        Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    rows = [f"img/{i}.png,caption {i}" for i in range(16)]
    rows[3] = "img/3.png," + "x" * (129 * 1024)
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption\n" + "\n".join(rows) + "\n")
    assert len(read_table(table, "csv")[3]["caption"]) == 129 * 1024  # an evaluation file reads it whole
    records, _ = index_source(str(table), progress=False)
    assert isinstance(read_caption(records[3]), Skip) and read_caption(records[3]).reason == "caption_too_long"
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(table), "--out", str(out), "--batch-size", "4", "--epochs", "1",
                 "--train.progress", "false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_skipped_samples"] == {"caption_too_long": 1}


def test_duplicate_sample_ids_are_refused_with_their_lines(tmp_path):
    table = tmp_path / "dup.csv"
    table.write_text("image,caption,sample_id\na.png,x,s1\nb.png,y,s2\nc.png,z,s1\nd.png,w,s3\ne.png,v,s2\n")
    with pytest.raises(UsageError) as err:
        index_source(str(table), progress=False)
    message = str(err.value)
    assert "'s1' on lines 2, 4" in message and "'s2' on lines 3, 6" in message
    jsonl = tmp_path / "dup.jsonl"
    jsonl.write_text('{"image": "a", "caption": "x", "sample_id": "q"}\n\n{"image": "b", "caption": "y", '
                     '"sample_id": "q"}\n')
    with pytest.raises(UsageError, match="'q' on lines 1, 3"):
        index_source(str(jsonl), progress=False)
    _ = np


def test_the_shipped_26_modality_recipe_parses():
    from mmkd.data.select import parse_clauses

    recipe = Path(__file__).resolve().parents[1] / "configs" / "mmkd_b16" / "select-26-modalities.yaml"
    clauses = parse_clauses([str(recipe)])
    assert clauses["image_primary_label"] == ["Clinical Imaging", "Microscopy"]
    assert len(clauses["image_secondary_label"]) == len(set(clauses["image_secondary_label"])) == 26
