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


# ---------------------------------------------------------------------------------------------
# Ties in retrieval, and the clustered bootstrap


def _expected_recall_over_tie_orders(sim, caption_image, ks):
    """Naive reference: average the 0/1 hits over every order of the candidates used as tie-breaker."""
    import itertools

    num_i, num_m = sim.shape
    i2t, t2i = np.zeros((num_i, len(ks))), np.zeros((num_m, len(ks)))
    text_orders = list(itertools.permutations(range(num_m)))
    for order in text_orders:
        for i in range(num_i):
            ranked = sorted(range(num_m), key=lambda j: (-sim[i, j], order[j]))
            for c, k in enumerate(ks):
                i2t[i, c] += any(caption_image[j] == i for j in ranked[:k])
    image_orders = list(itertools.permutations(range(num_i)))
    for order in image_orders:
        for j in range(num_m):
            ranked = sorted(range(num_i), key=lambda i: (-sim[i, j], order[i]))
            for c, k in enumerate(ks):
                t2i[j, c] += caption_image[j] in ranked[:k]
    return i2t.mean(0) / len(text_orders), t2i.mean(0) / len(image_orders)


def test_an_all_equal_similarity_matrix_scores_at_chance_not_one():
    from scipy.special import comb

    num_images, per_image = 20, 3
    caption_image = np.repeat(np.arange(num_images), per_image)
    got = retrieval_metrics(np.zeros((num_images, len(caption_image))), caption_image)
    num_m = len(caption_image)
    for k in (1, 5, 10):
        assert got[f"t2i_recall@{k}"] == pytest.approx(k / num_images)
        # at least one of the image's 3 captions among k drawn from all 60 (hypergeometric)
        assert got[f"i2t_recall@{k}"] == pytest.approx(1 - comb(num_m - per_image, k) / comb(num_m, k))
        assert got[f"i2t_recall@{k}"] < 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_with_ties_equals_the_average_over_every_tie_breaking_order(seed):
    rng = np.random.default_rng(seed)
    caption_image = np.array([0, 0, 1, 2, 3, 3, 4])
    sim = rng.integers(0, 3, size=(5, 7)).astype(float)  # three levels: many ties
    ks = (1, 2, 3)
    got = retrieval_metrics(sim, caption_image, ks=ks)
    i2t, t2i = _expected_recall_over_tie_orders(sim, caption_image, ks)
    for c, k in enumerate(ks):
        assert got[f"i2t_recall@{k}"] == pytest.approx(i2t[c])
        assert got[f"t2i_recall@{k}"] == pytest.approx(t2i[c])


def test_a_tie_with_a_wrong_candidate_is_not_a_free_hit():
    caption_image = np.array([0, 1])
    sim = np.array([[1.0, 1.0], [0.0, 1.0]])  # image 0 ties its caption with caption 1
    got = retrieval_metrics(sim, caption_image, ks=(1,))
    assert got["i2t_recall@1"] == pytest.approx((0.5 + 1.0) / 2)
    # caption 1 ties image 0 with its own image 1
    assert got["t2i_recall@1"] == pytest.approx((1.0 + 0.5) / 2)


def test_cluster_bootstrap_resamples_whole_clusters():
    from mmkd.evaluation.metrics import cluster_bootstrap_indices

    clusters = np.array(["b", "a", "b", "c", "a", "b"])  # sizes a 2, b 3, c 1, interleaved
    sizes = {c: int((clusters == c).sum()) for c in "abc"}
    for rows in cluster_bootstrap_indices(clusters, 200, seed=0):
        drawn = clusters[rows]
        for c in "abc":  # every drawn cluster comes with all of its rows, each once per draw
            assert (drawn == c).sum() % sizes[c] == 0
            per_row = np.bincount(rows[drawn == c], minlength=len(clusters))[clusters == c]
            assert len(set(per_row)) == 1
        # as many cluster draws as there are clusters
        assert sum((drawn == c).sum() // sizes[c] for c in "abc") == 3


def test_clustered_bootstrap_widens_the_ci_when_rows_of_a_cluster_agree():
    from mmkd.evaluation.metrics import bootstrap_mean_ci, cluster_bootstrap_mean_ci

    rng = np.random.default_rng(0)
    num_images, per_image = 200, 5
    right_I = (rng.random(num_images) < 0.6).astype(float)  # every question about an image right or wrong together
    values = np.repeat(right_I, per_image)
    images = np.repeat(np.arange(num_images), per_image)
    lo, hi = cluster_bootstrap_mean_ci(values, images, num_bootstrap=2000, seed=1)
    naive_lo, naive_hi = bootstrap_mean_ci(values, num_bootstrap=2000, seed=1)
    # the analytic 95 % interval of a mean over 200 independent images
    se = right_I.std(ddof=1) / np.sqrt(num_images)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert lo < values.mean() < hi
    # treating the 1000 questions as independent understates the width by about sqrt(5)
    assert (hi - lo) / (naive_hi - naive_lo) == pytest.approx(np.sqrt(per_image), rel=0.2)


def test_retrieval_ci_resamples_images_with_their_captions():
    from mmkd.evaluation.metrics import retrieval_ci

    rng = np.random.default_rng(3)
    num_images, per_image = 150, 4
    caption_image = np.repeat(np.arange(num_images), per_image)
    # an image is either easy (all its captions found) or hard (none): caption hits agree within an image
    easy = rng.random(num_images) < 0.5
    sim = rng.normal(0, 0.01, size=(num_images, len(caption_image)))
    sim[caption_image, np.arange(len(caption_image))] += np.where(easy[caption_image], 10.0, -10.0)
    point = retrieval_metrics(sim, caption_image, ks=(1,))
    lo, hi = retrieval_ci(sim, caption_image, ks=(1,), num_bootstrap=2000, seed=0)["t2i_recall@1"]
    se = easy.std(ddof=1) / np.sqrt(num_images)  # images, not the 600 captions, are the independent units
    assert lo < point["t2i_recall@1"] < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
