"""Metrics against scikit-learn and naive references on random data; bootstrap CI behaviour."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm

from mmkd.evaluation.metrics import (bootstrap_classification_ci, classification_metrics,
                                     classification_metrics_batched, retrieval_metrics,
                                     stratified_bootstrap_indices)


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _noisy_scores(y, num_classes, rng, signal=1.0):
    logits = rng.normal(size=(len(y), num_classes))
    logits[np.arange(len(y)), y] += signal
    return _softmax(logits)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_classification_metrics_match_sklearn(num_classes):
    rng = np.random.default_rng(num_classes)
    y = rng.integers(0, num_classes, 300)
    probs = _noisy_scores(y, num_classes, rng)
    got = classification_metrics(y, probs)
    pred = probs.argmax(1)
    if num_classes == 2:
        auroc = skm.roc_auc_score(y, probs[:, 1])
    else:
        auroc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert got["auroc"] == pytest.approx(auroc)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["accuracy"] == pytest.approx(np.mean(pred == y))
    # naive references
    recalls = [np.mean(pred[y == c] == c) for c in range(num_classes)]
    assert got["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert got["recall"] == pytest.approx(np.mean(recalls))
    precisions = [np.mean(y[pred == c] == c) if (pred == c).any() else 0.0 for c in range(num_classes)]
    assert got["precision"] == pytest.approx(np.mean(precisions))


def test_auroc_naive_pairwise_reference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    probs = _noisy_scores(y, 2, rng, signal=0.5)
    pos, neg = probs[y == 1, 1], probs[y == 0, 1]
    naive = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert classification_metrics(y, probs)["auroc"] == pytest.approx(naive)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), num_classes=st.integers(2, 5), n=st.integers(12, 60))
def test_batched_metrics_equal_sklearn_on_resamples(seed, num_classes, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    y[:num_classes] = np.arange(num_classes)  # every class present
    probs = np.round(_noisy_scores(y, num_classes, rng, signal=rng.uniform(0, 2)), 2)  # ties included
    idx = stratified_bootstrap_indices(y, 4, seed)
    batched = classification_metrics_batched(y[idx], probs[idx])
    for b in range(4):
        ref = classification_metrics(y[idx[b]], probs[idx[b]])
        for name, value in ref.items():
            assert batched[name][b] == pytest.approx(value, abs=1e-9, nan_ok=True), name


def test_stratified_bootstrap_keeps_class_counts():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = stratified_bootstrap_indices(y, 50, seed=0)
    assert idx.shape == (50, 20)
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [10, 3, 7]
    assert not np.array_equal(idx[0], idx[1])
    assert np.array_equal(idx, stratified_bootstrap_indices(y, 50, seed=0))  # fixed seed -> same resamples


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_data():
    widths = []
    for n in (100, 1600):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, n)
        probs = _noisy_scores(y, 3, rng, signal=1.0)
        point = classification_metrics(y, probs)
        ci = bootstrap_classification_ci(y, probs, num_bootstrap=1000, seed=0)
        assert set(ci) == set(point)
        for name, (lo, hi) in ci.items():
            assert lo <= point[name] <= hi, (name, lo, point[name], hi)
            assert lo < hi
        widths.append({k: hi - lo for k, (lo, hi) in ci.items()})
    for name in widths[0]:
        assert widths[1][name] < 0.6 * widths[0][name], name  # ~ 1/sqrt(16) = 0.25 expected


def test_recall_at_k_with_several_captions_matches_naive_loop():
    rng = np.random.default_rng(2)
    num_images = 40
    caption_image = np.concatenate([np.arange(num_images), rng.integers(0, num_images, 60)])  # 1-3 captions each
    sim = rng.normal(size=(num_images, len(caption_image)))
    got = retrieval_metrics(sim, caption_image)
    for k in (1, 5, 10):
        i2t = np.mean([bool(set(np.argsort(-sim[i])[:k]) & set(np.flatnonzero(caption_image == i)))
                       for i in range(num_images)])
        t2i = np.mean([caption_image[j] in np.argsort(-sim[:, j])[:k] for j in range(len(caption_image))])
        assert got[f"i2t_recall@{k}"] == pytest.approx(i2t)
        assert got[f"t2i_recall@{k}"] == pytest.approx(t2i)
    assert got["i2t_recall@10"] > got["i2t_recall@1"]


def test_recall_perfect_when_each_caption_matches_only_its_image():
    caption_image = np.array([0, 0, 1, 2, 2, 2])
    sim = np.full((3, 6), -1.0)
    sim[caption_image, np.arange(6)] = 1.0
    got = retrieval_metrics(sim, caption_image)
    assert all(v == 1.0 for v in got.values())
