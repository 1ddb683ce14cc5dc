"""`mmkd import-features` on the MMKD-CLIP authors' 8 reference samples."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import writable_array
from mmkd.data.feature_store import FeatureStore
from mmkd.errors import UsageError
from mmkd.teachers.import_authors import AUTHOR_TEACHERS, import_author_features

REF = Path(__file__).parent / "data" / "mmkd-reference" / "MMKDCLIP_DATA"


def _meta():
    return [json.loads(line) for line in (REF / "meta.jsonl").read_text().splitlines() if line.strip()]


def _pt(meta, name):
    return torch.load(REF / Path(meta["imgpath"]).parent / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "store"
    summary = import_author_features(REF, out, chunk_rows=3, progress=False)
    return out, summary


def test_reference_data_becomes_a_store(imported):
    out, summary = imported
    store = FeatureStore(out)
    metas = _meta()
    assert store.num_samples == 8 and store.sample_ids == [m["id"] for m in metas]
    assert sorted(store.teachers) == sorted(AUTHOR_TEACHERS) and len(store.teachers) == 8  # discovered from the files
    for name in store.teachers:
        assert store.embed_dim(name) == (768 if name in ("BMCA", "PMCCLIP") else 512)
        assert store.image_features(name).shape == (8, store.embed_dim(name))
        assert store.array(name, "projected_text").shape == (8, 512)
    expected_avail = np.array([[t in m["available_clips"] for t in store.teachers] for m in metas])
    np.testing.assert_array_equal(store.available, expected_avail)
    for row, meta in enumerate(metas):
        raw, proj = _pt(meta, "clips_output.pt"), _pt(meta, "clips_project_output.pt")
        for name in store.teachers:
            if f"{name}_img" not in raw:
                assert not store.image_features(name)[row].any()
                continue
            for kind, suffix in (("image", "img"), ("text", "txt")):
                got = store.array(name, kind)[row].astype(np.float32)
                want = raw[f"{name}_{suffix}"].numpy()
                np.testing.assert_allclose(got, want, atol=2 ** -11, rtol=0)  # float16 rounding of values < 1
                got_p = store.array(name, f"projected_{kind}")[row].astype(np.float32)
                np.testing.assert_allclose(got_p, proj[f"{name}_{suffix}"].numpy(), rtol=2 ** -10, atol=1e-6)
    assert store.verify() == []
    assert summary["problems"] == {}


def test_resume_after_an_interrupted_import(imported, tmp_path):
    out, _ = imported
    copy = tmp_path / "store"
    shutil.copytree(out, copy)
    (copy / "teachers" / "PLIP" / "chunks" / "000001.json").unlink()
    arr = writable_array(copy, "PLIP", "image")
    arr[3:6] = 0
    arr.flush()
    del arr
    import_author_features(REF, copy, chunk_rows=3, progress=False)
    fresh, ref = FeatureStore(copy), FeatureStore(out)
    for name in ref.teachers:
        for kind in ("image", "text", "projected_image", "available"):
            np.testing.assert_array_equal(fresh.array(name, kind), ref.array(name, kind))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_RAN",))


def test_pickles_are_opened_weights_only(tmp_path, monkeypatch):
    root = tmp_path / "authors"
    shutil.copytree(REF, root)
    first = _meta()[0]
    target = root / Path(first["imgpath"]).parent / "clips_output.pt"
    target.write_bytes(pickle.dumps({"BMCA_img": _Evil()}))
    monkeypatch.chdir(tmp_path)
    summary = import_author_features(root, tmp_path / "store", chunk_rows=4, progress=False)
    assert not (tmp_path / "EVIL_RAN").exists()
    assert summary["problems"] == {"unsafe_or_unreadable_features": 1}
    store = FeatureStore(tmp_path / "store")
    assert not store.available[0].any() and store.available[1:].any()


def test_wrong_dimension_is_refused(tmp_path):
    with pytest.raises(UsageError, match="expected 512"):
        import_author_features(REF, tmp_path / "s", teachers={"BMCA": 512}, progress=False)


def test_cli(tmp_path, capsys):
    from mmkd.cli import main

    assert main(["import-features", str(REF), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PMCCLIP" in out and "12.5%" in out  # one of eight samples lists PMCCLIP
    assert main(["import-features", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "meta.jsonl" in capsys.readouterr().err
    assert main(["import-features", str(REF), "--out", str(tmp_path / "u"), "--teacher-dims", "BMCA"]) == 2
    assert "NAME=DIM" in capsys.readouterr().err


def _write_layout(root: Path, teachers: dict[str, int], rows: list[list[str]], seed: int = 0) -> Path:
    """An authors'-layout folder: meta.jsonl + per-sample clips_output.pt / clips_project_output.pt holding
    only each sample's available teachers (as the released data does)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, available in enumerate(rows):
        folder = root / "features" / "f0" / f"s{i}"
        folder.mkdir(parents=True)
        raw = {f"{t}_{m}": torch.from_numpy(rng.normal(size=teachers[t]).astype(np.float32))
               for t in available for m in ("img", "txt")}
        torch.save(raw, folder / "clips_output.pt")
        torch.save({k: torch.from_numpy(rng.normal(size=256).astype(np.float32)) for k in raw},
                   folder / "clips_project_output.pt")
        lines.append(json.dumps({"folderid": "f0", "id": f"s{i}", "imgpath": f"features/f0/s{i}/img.jpg",
                                 "txt": f"caption {i}", "available_clips": available}))
    (root / "meta.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_other_teachers_are_discovered_from_the_files(tmp_path):
    dims = {"RadCLIP": 1024, "PathCLIP": 384, "EyeCLIP": 512}
    rows = [["RadCLIP"], ["PathCLIP", "RadCLIP"], ["EyeCLIP"], ["RadCLIP", "PathCLIP", "EyeCLIP"], []]
    root = _write_layout(tmp_path / "layout", dims, rows)
    summary = import_author_features(root, tmp_path / "store", chunk_rows=2, progress=False)
    store = FeatureStore(tmp_path / "store")
    assert store.teachers == ["RadCLIP", "PathCLIP", "EyeCLIP"]  # in order of first appearance
    assert {t: store.embed_dim(t) for t in store.teachers} == dims
    assert store.array("EyeCLIP", "projected_image").shape == (5, 256)  # the projected dim is read too
    expected = np.array([[t in r for t in store.teachers] for r in rows])
    np.testing.assert_array_equal(store.available, expected)
    raw = torch.load(root / "features/f0/s1/clips_output.pt", weights_only=True)
    np.testing.assert_allclose(store.array("PathCLIP", "text")[1].astype(np.float32), raw["PathCLIP_txt"].numpy(),
                               rtol=2 ** -10, atol=2 ** -14)
    assert summary["problems"] == {} and summary["listed_without_features"] == []
    assert set(summary["teachers"]) == set(dims)


def test_a_listed_teacher_without_features_is_reported(tmp_path, capsys):
    from mmkd.cli import main

    root = _write_layout(tmp_path / "layout", {"A": 64, "B": 32}, [["A"], ["A", "B"]])
    meta = (root / "meta.jsonl").read_text().replace('["A"]', '["A", "Ghost"]', 1)
    (root / "meta.jsonl").write_text(meta)
    assert main(["import-features", str(root), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "Ghost" in capsys.readouterr().err
    assert FeatureStore(tmp_path / "s").teachers == ["A", "B"]
