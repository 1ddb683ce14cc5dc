"""Catalog parsing and the dataset formats (imagefolder, csv, jsonl, medmnist)."""

import json
import warnings

import numpy as np
import pytest

from mmkd.errors import ConfigError, DataError, UsageError
from mmkd.evaluation.datasets import load_captions, load_classification
from mmkd.evaluation.prompts import DEFAULT_TEMPLATES, class_embeddings
from mmkd.evaluation.runner import TASKS, load_catalog, parse_catalog


def test_shipped_real_mini_catalog_works_out_of_the_box():
    entries = {e.name: e for e in load_catalog("real_mini")}
    assert set(entries) == {"breastmnist", "pneumoniamnist", "retinamnist", "pbc"}
    for e in entries.values():
        assert e.path.exists(), e.path
    breast = load_classification(entries["breastmnist"])
    assert {k: len(v) for k, v in breast.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert len(breast.classnames) == 2 and breast.classnames[0].startswith("malignant")
    retina = load_classification(entries["retinamnist"])
    assert len(retina.classnames) == 5 and retina.splits["test"].images.load(0).size == (28, 28)
    pbc = load_classification(entries["pbc"])
    assert "immature granulocyte" in pbc.classnames
    assert {k: len(v) for k, v in pbc.splits.items()} == {"test": 400, "train": 1200}
    assert np.bincount(pbc.splits["test"].labels).tolist() == [50] * 8
    assert entries["pbc"].templates and all("{}" in t for t in entries["pbc"].templates)


def test_public_catalog_parses_and_documents_every_dataset():
    entries = load_catalog("public_biomedical")
    names = {e.name for e in entries}
    for expected in ("lc25000_lung", "chexpert_5x200", "rsna_pneumonia", "siim_pneumothorax", "nct_crc_he",
                     "pcam", "isic2018", "aptos2019", "oct2017", "roco"):
        assert expected in names
    assert all(t in TASKS for e in entries for t in e.tasks)


def test_catalog_reports_every_problem_at_once(tmp_path):
    data = {"datasets": {
        "a": {"tasks": ["zero-shoot"], "format": "imagefolder", "path": "x"},
        "b": {"tasks": ["retrieval"], "format": "parquet"},
        "c": {"tasks": ["zero-shot"], "format": "csv", "path": "c.csv", "templates": "nope.txt"},
    }}
    with pytest.raises(ConfigError) as err:
        parse_catalog(data, tmp_path)
    msg = str(err.value)
    for key in ("datasets.a.tasks", "datasets.b.format", "datasets.b.path", "datasets.c.templates"):
        assert key in msg


def test_csv_labels_splits_and_jsonl_captions(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    lines = ["image,label,split"] + [f"img/{i}.png,{i % 2},{'train' if i < 4 else 'test'}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    rows = [{"image": "img/0.png", "captions": ["zero a", "zero b"]}, {"image": "img/1.png", "caption": "one"},
            {"image": "img/0.png", "caption": "zero c"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "tmpl.txt").write_text("# comment\nscan of {}\n")
    catalog = {"datasets": {
        "named": {"tasks": ["zero-shot"], "format": "csv", "path": "labels.csv", "classnames": ["healthy", "sick"],
                  "templates": "tmpl.txt"},
        "unnamed": {"tasks": ["linear-probe"], "format": "csv", "path": "labels.csv"},
        "caps": {"tasks": ["retrieval"], "format": "jsonl", "path": "caps.jsonl"},
    }}
    named, unnamed, caps = parse_catalog(catalog, tmp_path)
    assert named.templates == ["scan of {}"]
    data = load_classification(named)
    assert data.classnames == ["healthy", "sick"] and data.named
    assert data.splits["train"].labels.tolist() == [0, 1, 0, 1] and len(data.splits["test"]) == 2
    assert not load_classification(unnamed).named  # integer labels without names: no zero-shot
    from mmkd.evaluation.zero_shot import run as zero_shot_run

    with pytest.raises(UsageError, match="classnames"):
        zero_shot_run(None, unnamed, seed=0, cache=None, num_bootstrap=0)
    split, cs = load_captions(caps)
    assert split == "all" and len(cs.images) == 2
    assert cs.captions == ["zero a", "zero b", "one", "zero c"] and cs.caption_image.tolist() == [0, 0, 1, 0]


def test_missing_image_is_a_clear_data_error(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\ngone.png,a\n")
    (entry,) = parse_catalog({"datasets": {"d": {"tasks": ["zero-shot"], "format": "csv", "path": "labels.csv"}}},
                             tmp_path)
    with pytest.raises(DataError, match="gone.png"):
        load_classification(entry)


def test_missing_dataset_is_skipped_with_a_warning(tmp_path):
    from mmkd.evaluation.runner import evaluate

    catalog = {"datasets": {"absent": {"tasks": ["zero-shot"], "format": "imagefolder", "path": str(tmp_path / "no")}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UsageError, match="none of the selected datasets exists"):
            evaluate(None, catalog, ["zero-shot"], tmp_path / "out")


def test_class_embeddings_are_renormalised_prompt_means():
    import torch
    import torch.nn.functional as F

    class Fake:  # deterministic text encoder: a hash of the text -> unit vector
        embed_dim = 4

        def encode_text(self, texts):
            g = [torch.Generator().manual_seed(sum(map(ord, t))) for t in texts]
            return F.normalize(torch.stack([torch.randn(4, generator=x) for x in g]), dim=-1)

    emb = class_embeddings(Fake(), ["cat", "dog"], ["a {}", "the {}."], batch_size=3)
    ref = F.normalize(F.normalize(Fake().encode_text(["a cat", "the cat."]), dim=-1).mean(0), dim=0)
    assert emb.shape == (2, 4) and torch.allclose(emb[0], ref, atol=1e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert len(DEFAULT_TEMPLATES) >= 3
