"""Metrics with fixed names, and stratified bootstrap confidence intervals.

Legend: N samples, C classes, B bootstrap resamples, I images, M captions.

Point estimates come from scikit-learn. Bootstrap resamples (1000 by default) use an equivalent
vectorised numpy implementation (`classification_metrics_batched`, checked against scikit-learn
in tests/test_metrics.py), because 1000 × six scikit-learn calls per dataset would dominate the
evaluation time.

Definitions (macro = unweighted mean over classes):
- accuracy; balanced_accuracy (mean recall over classes present in y_true);
- auroc: binary -> AUROC of the positive class's score; multiclass -> macro one-vs-rest AUROC
  over the classes that have both positives and negatives;
- f1, precision, recall: macro over the classes present in y_true or y_pred (zero_division=0).
Retrieval with several captions per image: an image query hits at k when any of its captions is
in the top k texts; a caption query hits at k when its image is in the top k images. Ties never
count in a query's favour: a correct item tied with wrong ones is placed by a uniformly random
order of the tied group, and the hit is its probability of landing in the top k (so a model
whose similarities are all equal scores exactly at chance, k/I for a caption query, not 1.0).

Bootstrap CIs resample the independent units: classes are kept in proportion for classification
(stratified), and for retrieval and VQA whole images are resampled with all their captions or
questions (`cluster_bootstrap_mean_ci`), since several captions or questions about one image are
not independent observations.
"""

from __future__ import annotations

import numpy as np

CLASSIFICATION = ("accuracy", "balanced_accuracy", "auroc", "f1", "precision", "recall")


def _auroc_sklearn(y_true: np.ndarray, scores_NC: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    num_classes = scores_NC.shape[1]
    if num_classes == 2:
        return float(roc_auc_score(y_true == 1, scores_NC[:, 1])) if 0 < (y_true == 1).sum() < len(y_true) else float("nan")
    per_class = [roc_auc_score(y_true == c, scores_NC[:, c]) for c in range(num_classes)
                 if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean(per_class)) if per_class else float("nan")


def classification_metrics(y_true, scores_NC) -> dict[str, float]:
    """The six classification metrics (scikit-learn). `scores_NC`: class probabilities or logits;
    the prediction is their argmax."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.int64)
    scores_NC = np.asarray(scores_NC, dtype=np.float64)
    y_pred = scores_NC.argmax(axis=1)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {
                "accuracy": float(skm.accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
                "auroc": _auroc_sklearn(y_true, scores_NC),
                "f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "precision": float(skm.precision_score(y_true, y_pred, average="macro", zero_division=0)),
                "recall": float(skm.recall_score(y_true, y_pred, average="macro", zero_division=0)),
            }


def _auroc_batched(y_BN: np.ndarray, scores_BNC: np.ndarray) -> np.ndarray:
    """[B] AUROC per resample via the rank-sum (Mann-Whitney) formula, ties averaged."""
    from scipy.stats import rankdata

    num_classes = scores_BNC.shape[2]
    classes = [1] if num_classes == 2 else range(num_classes)
    per_class = []
    for c in classes:
        pos_BN = y_BN == c
        num_pos = pos_BN.sum(axis=1).astype(np.float64)
        num_neg = y_BN.shape[1] - num_pos
        ranks_BN = rankdata(scores_BNC[:, :, c], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks_BN * pos_BN).sum(axis=1) - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
        auc[(num_pos == 0) | (num_neg == 0)] = np.nan
        per_class.append(auc)
    stacked = np.stack(per_class, axis=1)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        return np.nanmean(stacked, axis=1)


def classification_metrics_batched(y_BN: np.ndarray, scores_BNC: np.ndarray) -> dict[str, np.ndarray]:
    """The six metrics for B resamples at once (same definitions as `classification_metrics`)."""
    num_b, num_n, num_c = scores_BNC.shape
    pred_BN = scores_BNC.argmax(axis=2)
    flat = (np.arange(num_b)[:, None] * num_c * num_c + y_BN * num_c + pred_BN).ravel()
    cm_BCC = np.bincount(flat, minlength=num_b * num_c * num_c).reshape(num_b, num_c, num_c).astype(np.float64)
    tp_BC = np.diagonal(cm_BCC, axis1=1, axis2=2)
    support_BC = cm_BCC.sum(axis=2)  # true counts
    predicted_BC = cm_BCC.sum(axis=1)
    present_BC = (support_BC > 0) | (predicted_BC > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_BC = np.where(support_BC > 0, tp_BC / support_BC, 0.0)
        precision_BC = np.where(predicted_BC > 0, tp_BC / predicted_BC, 0.0)
        denom = 2 * tp_BC + (predicted_BC - tp_BC) + (support_BC - tp_BC)
        f1_BC = np.where(denom > 0, 2 * tp_BC / denom, 0.0)
    num_present = present_BC.sum(axis=1)
    return {
        "accuracy": tp_BC.sum(axis=1) / num_n,
        "balanced_accuracy": (recall_BC * (support_BC > 0)).sum(axis=1) / (support_BC > 0).sum(axis=1),
        "auroc": _auroc_batched(y_BN, scores_BNC),
        "f1": (f1_BC * present_BC).sum(axis=1) / num_present,
        "precision": (precision_BC * present_BC).sum(axis=1) / num_present,
        "recall": (recall_BC * present_BC).sum(axis=1) / num_present,
    }


def stratified_bootstrap_indices(y: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
    """[B, N] indices: each resample draws, with replacement, as many samples of every class as it has."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    out = np.empty((num_resamples, len(y)), dtype=np.int64)
    pos = 0
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        out[:, pos:pos + len(members)] = rng.choice(members, size=(num_resamples, len(members)), replace=True)
        pos += len(members)
    return out


def _percentile_ci(values_B: np.ndarray, alpha: float) -> list[float]:
    finite = values_B[np.isfinite(values_B)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def bootstrap_classification_ci(y_true, scores_NC, num_bootstrap: int = 1000, seed: int = 0,
                                alpha: float = 0.05, chunk: int = 100) -> dict[str, list[float]]:
    """Percentile (1 - alpha) CIs of the six metrics from `num_bootstrap` stratified resamples."""
    y_true = np.asarray(y_true, dtype=np.int64)
    scores_NC = np.asarray(scores_NC, dtype=np.float64)
    if num_bootstrap <= 0:
        return {}
    idx_BN = stratified_bootstrap_indices(y_true, num_bootstrap, seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in CLASSIFICATION}
    for start in range(0, num_bootstrap, chunk):
        sel = idx_BN[start:start + chunk]
        for k, v in classification_metrics_batched(y_true[sel], scores_NC[sel]).items():
            parts[k].append(v)
    return {k: _percentile_ci(np.concatenate(v), alpha) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Retrieval


def retrieval_hits(sim_IM, caption_image, ks=(1, 5, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Hit probabilities at each k: image queries [I, K] and caption queries [M, K], ties counted in expectation.

    For a query, `above` wrong candidates score strictly higher than its best correct item, and a
    tied group holds `tied_wrong` wrong and `tied_correct` correct candidates at that score. With the
    tied group in uniformly random order, the query hits at k with probability
    P(first correct of the tied group is within its first k - above places)
    = 1 - C(tied_wrong, j) / C(tied_wrong + tied_correct, j), j = k - above  (0 when j <= 0).
    Without ties this is the usual 0/1 indicator.
    """
    sim_IM = np.asarray(sim_IM, dtype=np.float64)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    num_i, num_m = sim_IM.shape
    correct_IM = np.zeros((num_i, num_m), dtype=bool)
    correct_IM[caption_image, np.arange(num_m)] = True
    # image -> text: the best correct caption of each image
    best_I = np.where(correct_IM, sim_IM, -np.inf).max(axis=1, keepdims=True)
    i2t = _tie_hits((~correct_IM & (sim_IM > best_I)).sum(axis=1), (~correct_IM & (sim_IM == best_I)).sum(axis=1),
                    (correct_IM & (sim_IM == best_I)).sum(axis=1), ks)
    # text -> image: the caption's own image
    own_M = sim_IM[caption_image, np.arange(num_m)][None, :]
    t2i = _tie_hits((sim_IM > own_M).sum(axis=0), (sim_IM == own_M).sum(axis=0) - 1, np.ones(num_m, np.int64), ks)
    return i2t, t2i


def _tie_hits(above_Q: np.ndarray, tied_wrong_Q: np.ndarray, tied_correct_Q: np.ndarray, ks) -> np.ndarray:
    """[Q, K] probability that the first correct item lands in the top k (see `retrieval_hits`)."""
    above_Q, wrong_Q, good_Q = (np.asarray(a, dtype=np.float64) for a in (above_Q, tied_wrong_Q, tied_correct_Q))
    out = np.zeros((len(above_Q), len(ks)))
    for col, k in enumerate(ks):
        slots_Q = k - above_Q
        # C(w, j) / C(w + c, j) = prod_{i < j} (w - i) / (w + c - i): all j slots taken by wrong items
        all_wrong_Q = np.ones_like(above_Q)
        for i in range(int(k)):
            step = np.where(wrong_Q - i > 0, (wrong_Q - i) / np.maximum(wrong_Q + good_Q - i, 1.0), 0.0)
            all_wrong_Q = np.where(i < slots_Q, all_wrong_Q * step, all_wrong_Q)
        out[:, col] = np.where(slots_Q > 0, 1.0 - all_wrong_Q, 0.0)
    return out


def retrieval_metrics(sim_IM, caption_image, ks=(1, 5, 10)) -> dict[str, float]:
    """i2t_recall@k and t2i_recall@k (fractions in [0, 1]; ties as in `retrieval_hits`)."""
    i2t_IK, t2i_MK = retrieval_hits(sim_IM, caption_image, ks)
    out = {f"i2t_recall@{k}": float(i2t_IK[:, c].mean()) for c, k in enumerate(ks)}
    out.update({f"t2i_recall@{k}": float(t2i_MK[:, c].mean()) for c, k in enumerate(ks)})
    return out


def cluster_bootstrap_indices(clusters_N, num_resamples: int, seed: int) -> list[np.ndarray]:
    """Per resample, the rows of `num_clusters` clusters drawn with replacement (all rows of each draw).

    `clusters_N`: the cluster of every row (e.g. the image a question or caption is about). A resample
    has as many clusters as the data, so the number of rows varies when clusters differ in size.
    """
    codes_N = np.unique(np.asarray(clusters_N), return_inverse=True)[1].reshape(-1)
    order_N = np.argsort(codes_N, kind="stable")
    counts = np.bincount(codes_N)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    draws_BC = rng.integers(0, len(counts), size=(num_resamples, len(counts)))
    out = []
    for draw_C in draws_BC:
        sizes = counts[draw_C]
        # rows of every drawn cluster: its start offset plus 0..size-1, through the sort order
        offsets = np.repeat(starts[draw_C] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        out.append(order_N[offsets + np.arange(sizes.sum())])
    return out


def cluster_bootstrap_mean_ci(values_N, clusters_N, num_bootstrap: int = 1000, seed: int = 0,
                              alpha: float = 0.05) -> list[float]:
    """Percentile CI of the mean of per-row values, resampling whole clusters (see `cluster_bootstrap_indices`).

    The mean of a resample is over its rows (a ratio estimator: clusters weigh by their size, as in
    the point estimate). With one row per cluster it is the ordinary bootstrap of the mean.
    """
    values_N = np.asarray(values_N, dtype=np.float64)
    if num_bootstrap <= 0 or values_N.size == 0:
        return [float("nan"), float("nan")]
    means = np.array([values_N[rows].mean() for rows in cluster_bootstrap_indices(clusters_N, num_bootstrap, seed)])
    return _percentile_ci(means, alpha)


def bootstrap_mean_ci(values_N: np.ndarray, num_bootstrap: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> list[float]:
    """Percentile CI of the mean of independent per-row values (every row its own cluster)."""
    values_N = np.asarray(values_N)
    return cluster_bootstrap_mean_ci(values_N, np.arange(values_N.size), num_bootstrap, seed, alpha)


def retrieval_ci(sim_IM, caption_image, ks=(1, 5, 10), num_bootstrap: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """CIs of the recalls, resampling images: an image query is its own cluster, and a caption query
    belongs to its image's cluster (captions of one image are not independent)."""
    i2t_IK, t2i_MK = retrieval_hits(sim_IM, caption_image, ks)
    num_i = np.asarray(sim_IM).shape[0]
    out = {f"i2t_recall@{k}": cluster_bootstrap_mean_ci(i2t_IK[:, c], np.arange(num_i), num_bootstrap, seed)
           for c, k in enumerate(ks)}
    out.update({f"t2i_recall@{k}": cluster_bootstrap_mean_ci(t2i_MK[:, c], caption_image, num_bootstrap, seed + 1)
                for c, k in enumerate(ks)})
    return out
