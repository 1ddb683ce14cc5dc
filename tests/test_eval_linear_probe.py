"""Linear probe on cached frozen features, data fractions and k-shot; the feature cache."""

import numpy as np
import pytest
import torch

from mmkd.evaluation.runner import DatasetEntry, FeatureCache, evaluate, load_catalog

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 40, 210)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mmkd.teachers import load_teacher
    from mmkd.teachers.testing import make_open_clip_teacher

    folder = make_open_clip_teacher(tmp_path_factory.mktemp("lp") / "tiny", seed=1)
    return load_teacher(f"local-dir:{folder}", name="tiny")


def _colour_folder(root, splits):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                arr = np.clip(np.array(rgb) + rng.normal(0, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
    return root


def test_linear_probe_separable_colours_fractions_and_shots(tiny_model, tmp_path):
    root = _colour_folder(tmp_path / "colours", {"train": 20, "test": 8})
    entry = DatasetEntry(name="colours", tasks=["linear-probe"], format="imagefolder", path=root,
                         raw={"fractions": [0.1, 1.0], "shots": [1, 3], "c_grid": [0.1, 10.0]})
    (record,) = evaluate(tiny_model, [entry], ["linear-probe"], tmp_path / "out", num_bootstrap=100)
    settings = record["details"]["settings"]
    assert set(settings) == {"fraction=0.1", "fraction=1", "shots=1", "shots=3"}
    assert settings["shots=1"]["num_train"] == 3 and settings["shots=3"]["num_train"] == 9
    # val is held out of train (20 % stratified): 48 train, 12 val, 24 test
    assert record["split_sizes"] == {"train": 48, "val": 12, "test": 24}
    assert settings["fraction=0.1"]["num_train"] == 6  # ceil(0.1 * 16) per class
    assert settings["fraction=1"]["num_train"] == 48
    assert record["details"]["headline_setting"] == "fraction=1"
    assert record["metrics"]["accuracy"] >= 0.9  # colours are linearly separable even in random features
    assert record["details"]["settings"]["fraction=1"]["C"] in record["details"]["c_grid"]


def test_linear_probe_on_real_medmnist_official_splits(tiny_model, tmp_path):
    (entry,) = [e for e in load_catalog("real_mini") if e.name == "breastmnist"]
    entry.raw.update({"fractions": [0.1, 1.0], "shots": [2], "c_grid": [0.1, 1.0, 10.0]})
    (record,) = evaluate(tiny_model, [entry], ["linear-probe"], tmp_path / "out", num_bootstrap=100)
    assert record["split_sizes"] == {"train": 546, "val": 78, "test": 156}
    assert record["details"]["settings"]["shots=2"]["num_train"] == 4
    m = record["metrics"]
    assert set(m) == {"accuracy", "balanced_accuracy", "auroc", "f1", "precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in m.values())
    for name, (lo, hi) in record["ci"].items():
        assert lo - 1e-9 <= m[name] <= hi + 1e-9


class _Counting:
    """A ClipEncoder wrapper that counts encoder calls (a real model underneath)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name, self.embed_dim, self.preprocess = inner.name, inner.embed_dim, inner.preprocess
        self.tokenizer, self.provenance, self.model = inner.tokenizer, inner.provenance, inner.model

    def encode_image(self, pixels):
        self.calls += 1
        return self.inner.encode_image(pixels)

    def encode_text(self, texts):
        self.calls += 1
        return self.inner.encode_text(texts)


def test_feature_cache_second_run_encodes_nothing_and_new_weights_miss(tiny_model, tmp_path):
    root = _colour_folder(tmp_path / "colours", {"train": 6, "val": 3, "test": 4})
    entry = DatasetEntry(name="colours", tasks=["zero-shot", "linear-probe"], format="imagefolder", path=root,
                         raw={"fractions": [1.0], "shots": [], "c_grid": [1.0]})
    model = _Counting(tiny_model)
    first = evaluate(model, [entry], ["zero-shot", "linear-probe"], tmp_path / "out", num_bootstrap=50)
    assert model.calls > 0
    model.calls = 0
    cache = FeatureCache(tmp_path / "out" / ".feature_cache")
    second = evaluate(model, [entry], ["zero-shot", "linear-probe"], tmp_path / "out", num_bootstrap=50, cache=cache)
    assert model.calls == 0 and cache.misses == 0 and cache.hits > 0
    assert [r["metrics"] for r in first] == [r["metrics"] for r in second]
    cached = list((tmp_path / "out" / ".feature_cache").rglob("*.safetensors"))
    assert {p.name for p in cached} >= {"train.image.safetensors", "val.image.safetensors", "test.image.safetensors"}
    # Changed weights -> different fingerprint -> features are encoded again.
    with torch.no_grad():
        next(model.model.parameters()).add_(0.1)
    cache = FeatureCache(tmp_path / "out" / ".feature_cache")
    evaluate(model, [entry], ["zero-shot"], tmp_path / "out", num_bootstrap=0, cache=cache)
    assert cache.misses > 0 and model.calls > 0
