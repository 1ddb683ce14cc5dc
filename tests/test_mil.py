"""Gated-ABMIL cancer diagnosis: the head's contract, finding a planted patch feature, chance
under shuffled labels, patient-level folds, and one run from patch images through the runner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch


def planted_bags(num_slides: int = 48, dim: int = 32, seed: int = 0, strength: float = 3.0):
    """Bags of 10-29 random unit vectors; every positive slide also holds 2-5 patches pushed along
    one hidden direction u. Returns (bags, labels [S], planted mask per bag, u)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    labels = np.arange(num_slides) % 2
    bags, planted = [], []
    for label in labels:
        x = rng.normal(size=(rng.integers(10, 30), dim))
        k = rng.integers(2, 6) if label else 0
        x[:k] += strength * u
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        order = rng.permutation(len(x))  # planted patches anywhere in the bag
        bags.append(torch.tensor(x[order], dtype=torch.float32))
        planted.append(np.isin(order, np.arange(k)))
    return bags, labels, planted, u


def test_attention_is_a_distribution_and_padding_changes_nothing():
    from mmkd.evaluation.mil_heads import GatedABMIL, pad_bags

    torch.manual_seed(0)
    model = GatedABMIL(8, 3).eval()
    bags = [torch.randn(5, 8), torch.randn(2, 8), torch.randn(9, 8)]
    feats, mask = pad_bags(bags)
    out, attention = model(feats, mask)
    assert out.shape == (3, 3) and attention.shape == (3, 9)
    assert torch.allclose(attention.sum(1), torch.ones(3)) and (attention[~mask] == 0).all()
    for i, bag in enumerate(bags):  # each bag alone = the same bag in a padded batch
        alone, _ = model(*pad_bags([bag]))
        assert torch.allclose(alone[0], out[i], atol=1e-6)
        shuffled, _ = model(*pad_bags([bag[torch.randperm(len(bag))]]))  # and patch order is irrelevant
        assert torch.allclose(shuffled[0], out[i], atol=1e-5)


def test_mil_finds_the_planted_feature_and_attends_to_it():
    from mmkd.evaluation.metrics import classification_metrics
    from mmkd.evaluation.mil import cross_validate_mil
    from mmkd.evaluation.mil_heads import MILTrainConfig, cross_entropy_loss, fit_bag_model, pad_bags

    bags, labels, planted, _ = planted_bags(seed=0)
    result = cross_validate_mil(bags, labels, 2, num_folds=4, seed=0)
    metrics = classification_metrics(labels, result.probs_SC)
    assert metrics["auroc"] > 0.85 and metrics["balanced_accuracy"] > 0.65, metrics
    assert len(result.fold_auroc) == 4 and (result.fold_S >= 0).all()

    # the attention of a trained head lands on the planted patches of positive slides
    model = fit_bag_model(bags, 2, cross_entropy_loss(torch.as_tensor(labels)), MILTrainConfig(), seed=0)
    positives = [i for i in range(len(bags)) if labels[i] == 1]
    _, attention = model(*pad_bags([bags[i] for i in positives]))
    mass_on_planted = [attention[j, :len(bags[i])][torch.as_tensor(planted[i])].sum().item()
                       for j, i in enumerate(positives)]
    share_of_patches = [planted[i].mean() for i in positives]
    assert np.mean(mass_on_planted) > 2 * np.mean(share_of_patches), (np.mean(mass_on_planted), np.mean(share_of_patches))


def test_shuffled_labels_fall_back_to_chance():
    from mmkd.evaluation.metrics import classification_metrics
    from mmkd.evaluation.mil import cross_validate_mil

    bags, labels, _, _ = planted_bags(seed=1)
    aurocs = []
    for seed in range(2):
        shuffled = np.random.default_rng(100 + seed).permutation(labels)
        result = cross_validate_mil(bags, shuffled, 2, num_folds=4, seed=seed)
        aurocs.append(classification_metrics(shuffled, result.probs_SC)["auroc"])
    assert abs(np.mean(aurocs) - 0.5) < 0.15, aurocs


def test_patient_level_folds_never_split_a_patient():
    from mmkd.evaluation.mil import make_folds

    rng = np.random.default_rng(0)
    patients = np.repeat([f"P{i}" for i in range(20)], rng.integers(1, 4, 20))
    labels = np.asarray([int(p[1:]) % 2 for p in patients])  # one label per patient
    folds = make_folds(labels, patients, 5, seed=0)
    assert len(folds) == 5
    seen = np.zeros(len(labels), dtype=int)
    for train, test in folds:
        assert not set(patients[train]) & set(patients[test])
        assert set(labels[test]) == {0, 1}  # stratified
        seen[test] += 1
    assert (seen == 1).all()


def test_too_few_slides_per_class_is_a_clear_error():
    from mmkd.errors import DataError
    from mmkd.evaluation.mil import make_folds

    with pytest.warns(UserWarning, match="num_folds lowered from 5 to 2"):
        assert len(make_folds(np.array([0, 0, 1, 1, 1]), None, 5, seed=0)) == 2
    with pytest.raises(DataError, match="at least 2"):
        make_folds(np.array([0, 1, 1, 1]), None, 5, seed=0)


# ---------------------------------------------------------------------------------------------
# End to end: patch images -> tiny CLIP image encoder -> cached bags -> ABMIL -> result JSON


def write_patch_slides(root: Path, num_patients: int = 12, seed: int = 0) -> Path:
    """Two slides per patient, each a folder of 8 patch images of pinkish noise; slides of
    'tumor' patients also hold 3 patches with a dark blue blob (the planted visual feature)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for p in range(num_patients):
        label = "tumor" if p % 2 else "normal"
        for s in range(2):
            slide_id = f"P{p}-S{s}"
            folder = root / slide_id
            folder.mkdir(parents=True)
            for k in range(8):
                patch = np.clip(np.array([200, 120, 170]) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
                if label == "tumor" and k < 3:
                    patch[8:24, 8:24] = (30, 30, 140)
                Image.fromarray(patch.astype(np.uint8)).save(folder / f"{k}.png")
            rows.append([slide_id, slide_id, label, f"P{p}"])
    with open(root / "slides.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "path", "label", "patient_id"])
        w.writerows(rows)
    return root


def test_mil_classification_end_to_end(tmp_path):
    from mmkd.evaluation.runner import FeatureCache, evaluate
    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    s = create_student("mmkd-tiny-vit", seed=0)
    model = OpenClipEncoder(s.model, s.eval_transform, s.tokenizer, name="tiny")
    write_patch_slides(tmp_path / "slides")
    catalog = {"datasets": {"toy-wsi": {"tasks": ["mil-classification"], "format": "slides",
                                        "path": str(tmp_path / "slides"), "num_folds": 3,
                                        "classnames": ["normal", "tumor"]}}}
    cache = FeatureCache(tmp_path / "cache")
    [record] = evaluate(model, catalog, ["mil-classification"], tmp_path / "out", num_bootstrap=100, cache=cache)
    saved = json.loads((tmp_path / "out" / "tiny" / "toy-wsi__mil-classification.json").read_text())
    assert saved["metrics"] == record["metrics"]
    assert set(saved["metrics"]) == {"accuracy", "balanced_accuracy", "auroc", "f1", "precision", "recall"}
    assert saved["metrics"]["auroc"] > 0.8, saved["metrics"]
    lo, hi = saved["ci"]["auroc"]
    assert lo <= saved["metrics"]["auroc"] <= hi
    details = saved["details"]
    assert details["patient_level_folds"] and details["num_patients"] == 12 and details["num_folds"] == 3
    assert details["class_counts"] == {"normal": 12, "tumor": 12} and details["mean_patches_per_slide"] == 8
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 24  # one cache file per slide
