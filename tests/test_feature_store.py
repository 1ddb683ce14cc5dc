"""Feature store: round trip, chunk commits, integrity checks, refusal of stale teachers."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import mmkd
from mmkd.data.feature_store import (FeatureStore, FeatureStoreWriter, TeacherEntry, chunk_bounds, num_chunks)
from mmkd.data.records import ids_digest
from mmkd.errors import UsageError

PROV_A = {"weights": {"a.safetensors": "aa" * 32}, "preprocess": {"size": 32}, "tokenizer": {"context_length": 16}}
PROV_B = {"weights": {"b.safetensors": "bb" * 32}, "preprocess": {"size": 64}, "tokenizer": {"context_length": 77}}


def _random_chunk(rng, n, dim, extra=0):
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    out = {"image": feats, "text": np.roll(feats, 1, axis=1), "available": rng.random(n) > 0.3,
           "score": rng.standard_normal(n).astype(np.float32)}
    if extra:
        out["projected_image"] = rng.standard_normal((n, extra)).astype(np.float32)
    return out


def _write_store(path, num_samples=23, chunk_rows=5, seed=0):
    ids = [f"id-{i}" for i in range(num_samples)]
    entries = [TeacherEntry("alpha", 8, PROV_A), TeacherEntry("beta", 12, PROV_B, extra_dims={"projected_image": 4})]
    writer = FeatureStoreWriter.open(path, ids, entries, chunk_rows=chunk_rows)
    rng = np.random.default_rng(seed)
    expected = {e.name: [] for e in entries}
    for c in range(writer.num_chunks):
        start, stop = writer.chunk_bounds(c)
        for e in entries:
            arrays = _random_chunk(rng, stop - start, e.embed_dim, extra=4 if e.extra_dims else 0)
            writer.write_chunk(c, e.name, arrays)
            expected[e.name].append(arrays)
    writer.finalize()
    merged = {name: {k: np.concatenate([a[k] for a in chunks]) for k in chunks[0]} for name, chunks in expected.items()}
    return ids, merged


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_reads_what_was_written(tmp_path):
    ids, expected = _write_store(tmp_path / "store")
    store = mmkd.FeatureStore(tmp_path / "store")
    assert store.teachers == ["alpha", "beta"]
    assert store.num_samples == 23 and store.sample_ids == ids
    img = store.image_features("beta")
    assert isinstance(img, np.memmap) and img.dtype == np.float16 and img.shape == (23, 12)
    np.testing.assert_array_equal(img, expected["beta"]["image"].astype(np.float16))
    np.testing.assert_array_equal(store.text_features("alpha"), expected["alpha"]["text"].astype(np.float16))
    np.testing.assert_array_equal(store.array("beta", "projected_image"),
                                  expected["beta"]["projected_image"].astype(np.float16))
    np.testing.assert_array_equal(store.scores("alpha"), expected["alpha"]["score"])
    assert store.available.shape == (23, 2) and store.available.dtype == bool
    np.testing.assert_array_equal(store.available[:, 1], expected["beta"]["available"])
    assert store.manifest["complete"] and store.manifest["dtype"] == "float16"
    assert len(store.manifest["chunks"]) == 2 * num_chunks(23, 5)
    assert store.verify() == []


def test_rows_returns_a_batch_in_the_order_asked(tmp_path):
    _, expected = _write_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    idx = np.array([17, 2, 2, 22, 0, 9])
    batch = store.rows(idx)
    np.testing.assert_array_equal(batch["image"]["alpha"], expected["alpha"]["image"][idx].astype(np.float16))
    np.testing.assert_array_equal(batch["text"]["beta"], expected["beta"]["text"][idx].astype(np.float16))
    np.testing.assert_array_equal(batch["available"], store.available[idx])
    assert store.row_of("id-9") == 9
    np.testing.assert_array_equal(store.rows_of(["id-3", "id-0"]), [3, 0])
    with pytest.raises(IndexError):
        store.rows([23])


def test_rows_of_a_part_of_the_teachers_and_kinds(tmp_path):
    """A small part of each stored row (one teacher, one kind) is gathered on its own, not as whole rows."""
    _, expected = _write_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    idx = np.array([5, 21, 0])
    batch = store.rows(idx, kinds=("image",), teachers=["alpha"])
    assert set(batch) == {"image", "available"} and set(batch["image"]) == {"alpha"}
    np.testing.assert_array_equal(batch["image"]["alpha"], expected["alpha"]["image"][idx].astype(np.float16))
    np.testing.assert_array_equal(batch["available"][:, 0], expected["alpha"]["available"][idx])


def test_rows_of_one_store_asked_many_ways(tmp_path):
    """A store remembers how to read each (kinds, teachers) it was asked for; every later ask, the
    same or another, still reads what was written, in the order asked."""
    _, expected = _write_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    asks = [(("image",), ["alpha"]), (("image",), ["beta"]), (("image", "text"), None),
            (("text", "score"), ["beta", "alpha"]), (("image",), ["alpha"]), (("projected_image", "image"), ["beta"]),
            (("image", "text"), None)]
    rng = np.random.default_rng(0)
    for kinds, teachers in asks:
        idx = rng.integers(0, 23, size=7)
        batch = store.rows(idx, kinds=kinds, teachers=teachers)
        names = teachers or ["alpha", "beta"]
        assert set(batch) == set(kinds) | {"available"}
        for kind in kinds:
            assert list(batch[kind]) == names
            for t in names:
                want = expected[t][kind][idx]
                np.testing.assert_array_equal(batch[kind][t], want if kind == "score" else want.astype(np.float16))
        np.testing.assert_array_equal(batch["available"], np.stack([expected[t]["available"][idx] for t in names], 1))


def test_verify_finds_a_flipped_byte(tmp_path):
    _write_store(tmp_path / "store")
    from helpers import writable_array

    arr = writable_array(tmp_path / "store", "alpha", "image")
    arr[21, 3] = -arr[21, 3] - 1  # last chunk
    arr.flush()
    del arr
    problems = FeatureStore(tmp_path / "store").verify()
    assert len(problems) == 1 and "alpha/image rows 20:23" in problems[0]


def test_incomplete_store_is_not_opened_by_default(tmp_path):
    ids = [str(i) for i in range(10)]
    writer = FeatureStoreWriter.open(tmp_path / "s", ids, [TeacherEntry("alpha", 8, PROV_A)], chunk_rows=4)
    writer.write_chunk(1, "alpha", _random_chunk(np.random.default_rng(0), 4, 8))
    with pytest.raises(UsageError, match="incomplete"):
        FeatureStore(tmp_path / "s")
    assert FeatureStore(tmp_path / "s", allow_partial=True).num_samples == 10
    reopened = FeatureStoreWriter.open(tmp_path / "s", ids, [TeacherEntry("alpha", 8, PROV_A)], chunk_rows=4)
    assert reopened.pending(["alpha"]) == {0: ["alpha"], 2: ["alpha"]}
    with pytest.raises(RuntimeError, match="uncommitted"):
        reopened.finalize()


@pytest.mark.parametrize("change", ["weights", "preprocess", "dim", "settings", "sample_ids"])
def test_changed_teacher_or_data_is_refused_and_nothing_is_written(tmp_path, change):
    ids, _ = _write_store(tmp_path / "store")
    before = _tree_digest(tmp_path / "store")
    prov = json.loads(json.dumps(PROV_A))
    dim, settings_, new_ids = 8, {}, ids
    if change == "weights":
        prov["weights"]["a.safetensors"] = "cc" * 32
    elif change == "preprocess":
        prov["preprocess"]["size"] = 48
    elif change == "dim":
        dim = 16
    elif change == "settings":
        settings_ = {"candidates": 3}
    else:
        new_ids = ids[:-1] + ["other"]
    with pytest.raises(UsageError, match="refusing|different dataset") as err:
        FeatureStoreWriter.open(tmp_path / "store", new_ids, [TeacherEntry("alpha", dim, prov, settings=settings_)])
    if change in ("weights", "preprocess"):
        assert f"{change} changed" in str(err.value)
    assert _tree_digest(tmp_path / "store") == before


def test_provenance_versions_do_not_make_a_teacher_stale(tmp_path):
    ids, _ = _write_store(tmp_path / "store")
    prov = {**PROV_A, "versions": {"torch": "9.9"}, "spec": "moved/elsewhere"}
    writer = FeatureStoreWriter.open(tmp_path / "store", ids, [TeacherEntry("alpha", 8, prov)])
    assert writer.pending(["alpha"]) == {}


def test_adding_a_teacher_to_a_finished_store(tmp_path):
    ids, expected = _write_store(tmp_path / "store")
    writer = FeatureStoreWriter.open(tmp_path / "store", ids, [TeacherEntry("gamma", 6, PROV_B)])
    assert sorted(writer.pending(["alpha", "beta", "gamma"])) == list(range(writer.num_chunks))
    assert all(v == ["gamma"] for v in writer.pending(["alpha", "beta", "gamma"]).values())
    rng = np.random.default_rng(5)
    for c in range(writer.num_chunks):
        start, stop = writer.chunk_bounds(c)
        writer.write_chunk(c, "gamma", _random_chunk(rng, stop - start, 6))
    writer.finalize()
    store = FeatureStore(tmp_path / "store")
    assert store.teachers == ["alpha", "beta", "gamma"] and store.available.shape == (23, 3)
    np.testing.assert_array_equal(store.image_features("alpha"), expected["alpha"]["image"].astype(np.float16))
    assert store.verify() == []


def test_not_a_store_and_bad_names(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(UsageError, match="not a feature store"):
        FeatureStoreWriter.open(tmp_path / "junk", ["a"], [TeacherEntry("alpha", 8, PROV_A)])
    with pytest.raises(UsageError, match="manifest"):
        FeatureStore(tmp_path / "junk")
    with pytest.raises(UsageError, match="name"):
        FeatureStoreWriter.open(tmp_path / "new", ["a"], [TeacherEntry("../evil", 8, PROV_A)])


@settings(max_examples=60, deadline=None)
@given(num_samples=st.integers(1, 500), chunk_rows=st.integers(1, 64))
def test_chunks_cover_every_row_exactly_once(num_samples, chunk_rows):
    covered = np.zeros(num_samples, int)
    for c in range(num_chunks(num_samples, chunk_rows)):
        start, stop = chunk_bounds(c, num_samples, chunk_rows)
        assert 0 < stop - start <= chunk_rows
        covered[start:stop] += 1
    assert (covered == 1).all()


@settings(max_examples=60, deadline=None)
@example(ids=['x", ', "y", 'z\\', '", "'], chunk_bytes=4)  # separators inside ids; an id ending in a backslash
@given(ids=st.lists(st.text(alphabet=st.sampled_from(list('ab", \\\n[]{}é\u2603')), max_size=6), max_size=40),
       chunk_bytes=st.integers(1, 64))
def test_id_list_is_streamed_exactly_at_any_chunk_size(tmp_path_factory, ids, chunk_bytes):
    from mmkd.data.feature_store import iter_json_strings
    from mmkd.utils.io import atomic_write_json

    path = tmp_path_factory.mktemp("ids") / "sample_ids.json"
    atomic_write_json(path, ids, indent=None)
    assert list(iter_json_strings(path, chunk_bytes)) == ids


def test_rows_of_subset_identity_and_missing(tmp_path):
    _write_store(tmp_path / "s", num_samples=23)
    store = FeatureStore(tmp_path / "s")
    all_ids = store.sample_ids
    assert np.array_equal(store.rows_of(list(all_ids)), np.arange(23))  # the store's own ids: identity
    subset = [all_ids[i] for i in (17, 3, 3, 22, 0)]
    for chunk_bytes in (7, 1 << 22):  # streamed through chunk boundaries, or in one piece
        fresh = FeatureStore(store.path)
        assert np.array_equal(fresh.rows_of(subset, chunk_bytes=chunk_bytes), [17, 3, 3, 22, 0])
        assert fresh._row_of is None, "a subset must not build the lookup of every store id"
    with pytest.raises(KeyError) as e:
        store.rows_of(["id-4", "nope", "id-5", "nope", "also-not"])
    assert e.value.args[0] == ["nope", "also-not"]
    assert store.rows_of(list(reversed(all_ids)))[0] == 22  # same ids, other order: not the identity


def _data_offset_and_row_bytes(path: Path) -> tuple[int, int]:
    """Where a .npy file's data starts and how many bytes a row takes, as numpy's own format reader says."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        assert version == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert not fortran
        return f.tell(), int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize


@pytest.mark.parametrize("num_samples,chunk_rows", [(23, 5), (2100, 1024), (40, 3), (64, 32)])
def test_every_chunk_of_every_array_starts_on_a_page(tmp_path, num_samples, chunk_rows):
    """Ranks on different nodes write different chunks of the same files: no 4 KiB page may hold bytes of
    two chunks, in any array (features, availability, scores, extras, content digests)."""
    ids = [f"id-{i}" for i in range(num_samples)]
    entries = [TeacherEntry("alpha", 8, PROV_A), TeacherEntry("beta", 12, PROV_B, extra_dims={"projected_image": 5})]
    writer = FeatureStoreWriter.open(tmp_path / "s", ids, entries, chunk_rows=chunk_rows, record_content=True)
    files = sorted((tmp_path / "s").rglob("*.npy"))
    assert len(files) == 1 + 2 * 2 + 1 + 1  # features, available + score of each, beta's extra, content
    for file in files:
        offset, row_bytes = _data_offset_and_row_bytes(file)
        assert offset == 4096, file
        for c in range(writer.num_chunks):
            assert (offset + c * chunk_rows * row_bytes) % 4096 == 0, (file.name, c, row_bytes)
    rng = np.random.default_rng(1)
    expected = {}
    for c in range(writer.num_chunks):
        start, stop = writer.chunk_bounds(c)
        for e in entries:
            expected[e.name, c] = _random_chunk(rng, stop - start, e.embed_dim, extra=5 if e.extra_dims else 0)
            writer.write_chunk(c, e.name, expected[e.name, c], content=rng.integers(0, 255, (stop - start, 16), np.uint8))
    writer.finalize()
    store = FeatureStore(tmp_path / "s")
    for (name, c), arrays in expected.items():
        start, stop = writer.chunk_bounds(c)
        for kind, data in arrays.items():
            np.testing.assert_array_equal(store.array(name, kind)[start:stop], data.astype(store.array(name, kind).dtype))
    assert store.rows([2, 0])["available"].shape == (2, 2) and store.verify() == []


def test_finishing_checks_every_checksum_and_uncommits_a_damaged_chunk(tmp_path):
    """Rows changed on disk after their commit (another writer's page, a bad disk) are found when the store is
    finished: it stays incomplete, the chunk is uncommitted, and writing it again finishes the store."""
    from helpers import writable_array

    from mmkd.data.feature_store import StoreChecksumError

    ids = [str(i) for i in range(12)]
    writer = FeatureStoreWriter.open(tmp_path / "s", ids, [TeacherEntry("alpha", 8, PROV_A)], chunk_rows=4)
    rng = np.random.default_rng(0)
    chunks = [_random_chunk(rng, 4, 8) for _ in range(3)]
    for c, arrays in enumerate(chunks):
        writer.write_chunk(c, "alpha", arrays)
    arr = writable_array(tmp_path / "s", "alpha", "score")
    arr[5] = 123.0  # chunk 1
    arr.flush()
    del arr
    with pytest.raises(StoreChecksumError, match="alpha/score rows 4:8"):
        writer.finalize()
    assert writer.pending(["alpha"]) == {1: ["alpha"]}
    with pytest.raises(UsageError, match="incomplete"):
        FeatureStore(tmp_path / "s")
    writer.write_chunk(1, "alpha", chunks[1])
    writer.finalize()
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s").scores("alpha"),
                                  np.concatenate([a["score"] for a in chunks]))


def test_extract_verify_reports_a_damaged_store(tmp_path, capsys):
    from helpers import writable_array

    from mmkd.cli import main

    _write_store(tmp_path / "store")
    assert main(["extract", "--verify", "--out", str(tmp_path / "store")]) == 0
    assert "10 chunk(s) of 2 teacher(s) verified" in capsys.readouterr().out
    arr = writable_array(tmp_path / "store", "beta", "projected_image")
    arr[7, 0] += 1
    arr.flush()
    del arr
    assert main(["extract", "--verify", "--out", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert "beta/projected_image rows 5:10: checksum mismatch" in err and "Traceback" not in err
    assert main(["extract", "--verify"]) == 2
    assert "--out" in capsys.readouterr().err


def _write_version2_store(path: Path, ids: list[str], dim: int, chunk_rows: int, rng) -> dict[str, np.ndarray]:
    """A store as format version 2 wrote it: numpy's own 128-byte .npy headers, no padding, plain 1-D arrays."""
    n = len(ids)
    (path / "teachers" / "old" / "chunks").mkdir(parents=True)
    (path / "sample_ids.json").write_text(json.dumps(ids))
    feats = rng.standard_normal((n, 2 * dim)).astype(np.float16)
    arrays = {"image": feats[:, :dim], "text": feats[:, dim:], "available": rng.random(n) > 0.5,
              "score": rng.standard_normal(n).astype(np.float32)}
    np.save(path / "teachers" / "features-0123456789ab.npy", feats)
    np.save(path / "teachers" / "old" / "available.npy", arrays["available"])
    np.save(path / "teachers" / "old" / "score.npy", arrays["score"])
    specs = {"image": {"shape": [n, dim], "dtype": "float16", "file": "teachers/features-0123456789ab.npy",
                       "columns": [0, dim]},
             "text": {"shape": [n, dim], "dtype": "float16", "file": "teachers/features-0123456789ab.npy",
                      "columns": [dim, 2 * dim]},
             "available": {"shape": [n], "dtype": "bool", "file": "teachers/old/available.npy"},
             "score": {"shape": [n], "dtype": "float32", "file": "teachers/old/score.npy"}}
    entry = TeacherEntry("old", dim, PROV_A)
    chunks = []
    for c in range(num_chunks(n, chunk_rows)):
        start, stop = chunk_bounds(c, n, chunk_rows)
        rec = {"teacher": "old", "chunk": c, "start": start, "stop": stop,
               "sha256": {k: hashlib.sha256(np.ascontiguousarray(a[start:stop]).tobytes()).hexdigest()
                          for k, a in arrays.items()}}
        (path / "teachers" / "old" / "chunks" / f"{c:06d}.json").write_text(json.dumps(rec))
        chunks.append(rec)
    manifest = {"format_version": 2, "dtype": "float16", "num_samples": n, "sample_ids_sha256": ids_digest(ids),
                "chunk_rows": chunk_rows, "complete": True, "chunks": chunks,
                "teachers": [{"name": "old", "embed_dim": dim, "fingerprint": entry.fingerprint, "provenance": PROV_A,
                              "settings": {}, "arrays": specs}]}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return arrays


def test_a_version_2_store_is_read_and_extended_as_it_is(tmp_path):
    ids = [f"id-{i}" for i in range(11)]
    old = _write_version2_store(tmp_path / "s", ids, 6, 4, np.random.default_rng(2))
    before = (tmp_path / "s" / "teachers" / "features-0123456789ab.npy").read_bytes()
    store = FeatureStore(tmp_path / "s")
    for kind, data in old.items():
        np.testing.assert_array_equal(store.array("old", kind), data)
    assert store.verify() == []
    writer = FeatureStoreWriter.open(tmp_path / "s", ids, [TeacherEntry("old", 6, PROV_A), TeacherEntry("new", 8, PROV_B)])
    assert writer.pending(["old", "new"]) == {c: ["new"] for c in range(3)}
    rng = np.random.default_rng(3)
    new = [_random_chunk(rng, stop - start, 8) for start, stop in map(writer.chunk_bounds, range(3))]
    for c, arrays in enumerate(new):
        writer.write_chunk(c, "new", arrays)
    writer.finalize()
    store = FeatureStore(tmp_path / "s")
    assert store.manifest["format_version"] == 3 and store.verify() == []
    np.testing.assert_array_equal(store.available[:, 0], old["available"])
    np.testing.assert_array_equal(store.available[:, 1], np.concatenate([a["available"] for a in new]))
    assert (tmp_path / "s" / "teachers" / "features-0123456789ab.npy").read_bytes() == before
