"""The shipped real-mini sets as a captioned corpus: splits, captions from class names, catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_cli
from mmkd.synth import real_corpus
from mmkd.synth.real_corpus import REAL_SETS, write_real_corpus
from mmkd.synth.io import read_rgb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The quick real corpus, written through the command line."""
    out = tmp_path_factory.mktemp("real") / "quick"
    result = run_cli("synth", "--real", "--out", str(out), "--quick", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "captions made from class names" in result.stdout
    return out


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def test_official_split_sizes_are_kept():
    sizes = {name: {split: len(items) for split, items in real_corpus._load_splits(spec, seed=0).items()}
             for name, spec in REAL_SETS.items()}
    assert sizes["breastmnist"] == {"train": 546, "val": 78, "test": 156}
    assert sizes["retinamnist"] == {"train": 1080, "val": 120, "test": 400}
    assert sizes["pneumoniamnist"] == {"train": 4708, "val": 524, "test": 624}
    # PBC ships train/test (150 + 50 per class); a seeded 10 % of train becomes val
    assert sizes["pbc"] == {"train": 1080, "val": 120, "test": 400}
    pbc = real_corpus._load_splits(REAL_SETS["pbc"], seed=0)
    train_files = {src for _, _, src in pbc["train"]}
    assert train_files.isdisjoint(src for _, _, src in pbc["val"])
    assert train_files.isdisjoint(src for _, _, src in pbc["test"])
    other_seed = real_corpus._load_splits(REAL_SETS["pbc"], seed=1)
    assert {s for s, _, _ in pbc["val"]} != {s for s, _, _ in other_seed["val"]}


def test_training_pairs_come_from_train_splits_with_captions_from_class_names(corpus):
    pairs = _read(corpus / "train" / "pairs.csv")
    assert list(pairs.columns) == ["image", "caption", "sample_id", "modality", "label", "dataset"]
    assert pairs.sample_id.str.contains("-train-").all()
    assert set(pairs.modality) == {"chest-xray", "breast-ultrasound", "fundus", "blood-cells"}
    for name, spec in REAL_SETS.items():
        mine = pairs[pairs.dataset == name]
        assert set(mine.label) == set(spec.classnames)
        assert (mine.label.value_counts() <= 40).all()  # --quick caps every class at 40 pairs
        for label, text in zip(mine.label, mine.caption):
            phrases = spec.class_phrases[spec.classnames.index(label)]
            assert any(p.lower() in text.lower() for p in phrases), text  # the caption names its class
        assert mine.caption.nunique() > 5
    assert (corpus / "train" / pairs.image).map(Path.is_file).all()
    readme = (corpus / "README.md").read_text()
    assert "made from each image's class name" in readme and "CC BY 4.0" in readme and "Acevedo" in readme
    assert json.loads((corpus / "manifest.json").read_text())["captions"].startswith("made from class names")


def test_images_are_the_shipped_pixels(corpus):
    test = _read(corpus / "eval" / "breastmnist" / "test.csv")
    data = np.load(real_corpus.REAL_MINI / "medmnist" / "breastmnist.npz")
    row = test.iloc[0]
    index = int(row.sample_id.rsplit("-", 1)[1])
    image = read_rgb(corpus / "eval" / "breastmnist" / row.image)
    assert np.array_equal(image[..., 0], data["test_images"][index])
    assert int(data["test_labels"][index, 0]) == row.label_id
    pbc = _read(corpus / "eval" / "pbc" / "test.csv").iloc[0]
    stem = pbc.sample_id.split("-", 2)[2]
    original = next((real_corpus.REAL_MINI / "pbc" / "test").glob(f"*/{stem}.jpg"))
    assert (corpus / "eval" / "pbc" / pbc.image).read_bytes() == original.read_bytes()


def test_catalog_entries_exist_with_declared_columns(corpus):
    catalog = yaml.safe_load((corpus / "catalog.yaml").read_text())["datasets"]
    assert set(catalog) == {f"real-{n}{s}" for n in REAL_SETS for s in ("", "-retrieval")}
    for name, entry in catalog.items():
        path = corpus / entry["path"]
        table = _read(path)
        assert entry["format"] == "csv" and entry["modality"]
        assert (path.parent / table.image).map(Path.is_file).all(), name
        if "zero-shot" in entry["tasks"]:
            assert entry["tasks"] == ["zero-shot", "linear-probe"]
            assert {"image", "label", "label_id", "modality"} <= set(table.columns)
            assert all("{}" in t for t in (corpus / entry["templates"]).read_text().splitlines())
            splits = {s: _read(corpus / p) for s, p in entry["split"].items()}
            assert set(splits) == {"train", "val", "test"}
            assert set(splits["test"].sample_id) == set(table.sample_id)
            assert table.sample_id.str.contains("-test-").all()  # evaluation on the official test split
            for split_table in splits.values():
                assert set(split_table.label) <= set(entry["classnames"])
                assert all(entry["classnames"][i] == lab for i, lab in zip(split_table.label_id, split_table.label))
            assert not set(splits["train"].sample_id) & set(splits["val"].sample_id)
        else:
            assert entry["tasks"] == ["retrieval"]
            per_image = table.groupby("image").caption.agg(["count", "nunique"])
            assert (per_image["count"] == 3).all() and (per_image["nunique"] == 3).all()


def test_pairs_and_shards_agree(corpus):
    from mmkd.data.pairs import PairDataset, index_source

    csv_records, _ = index_source(str(corpus / "train" / "pairs.csv"))
    shard_records, problems = index_source(str(corpus / "train" / "shards"))
    assert len(csv_records) == len(shard_records) and not problems
    a, b = PairDataset(csv_records)[-1], PairDataset(shard_records)[-1]
    assert a["caption"] == b["caption"] and np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))


def test_deterministic_and_reused(corpus, tmp_path):
    again = write_real_corpus(tmp_path / "again", quick=True, progress=False)
    for rel in ("train/pairs.csv", "eval/pbc/retrieval.csv", "eval/retinamnist/val.csv", "catalog.yaml"):
        assert (corpus / rel).read_bytes() == (again.root / rel).read_bytes(), rel
    before = (again.root / "train" / "pairs.csv").stat().st_mtime_ns
    write_real_corpus(tmp_path / "again", quick=True, progress=False)
    assert (again.root / "train" / "pairs.csv").stat().st_mtime_ns == before


def test_merged_with_the_synthetic_catalog(corpus, tmp_path):
    from mmkd.synth import corpus as synth
    from mmkd.synth.io import merge_catalogs

    tiny = synth.SynthSizes(1, (1, 1, 1), 1, 2, 1, 2, 2)
    synthetic = synth.generate(tmp_path / "synth", sizes=tiny, progress=False)
    merged = merge_catalogs(tmp_path / "demo" / "catalog.yaml", [corpus / "catalog.yaml", synthetic.catalog])
    assert any(n.startswith("real-") for n in merged) and any(n.startswith("synth-") for n in merged)
    for entry in merged.values():
        assert (tmp_path / "demo" / entry["path"]).is_file()
