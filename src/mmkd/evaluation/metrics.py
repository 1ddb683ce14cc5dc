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
in the top k texts; a caption query hits at k when its image is in the top k images.
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


def retrieval_ranks(sim_IM: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the first correct item for every image query [I] and caption query [M].

    rank = number of candidates scoring strictly higher than the best correct one.
    """
    sim_IM = np.asarray(sim_IM, dtype=np.float64)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    num_i, num_m = sim_IM.shape
    correct_IM = np.zeros((num_i, num_m), dtype=bool)
    correct_IM[caption_image, np.arange(num_m)] = True
    best_correct_I = np.where(correct_IM, sim_IM, -np.inf).max(axis=1)
    i2t_rank = (sim_IM > best_correct_I[:, None]).sum(axis=1)
    correct_score_M = sim_IM[caption_image, np.arange(num_m)]
    t2i_rank = (sim_IM > correct_score_M[None, :]).sum(axis=0)
    return i2t_rank, t2i_rank


def retrieval_metrics(sim_IM, caption_image, ks=(1, 5, 10)) -> dict[str, float]:
    """i2t_recall@k and t2i_recall@k (fractions in [0, 1])."""
    i2t_rank, t2i_rank = retrieval_ranks(sim_IM, caption_image)
    out = {f"i2t_recall@{k}": float((i2t_rank < k).mean()) for k in ks}
    out.update({f"t2i_recall@{k}": float((t2i_rank < k).mean()) for k in ks})
    return out


def bootstrap_mean_ci(values_N: np.ndarray, num_bootstrap: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> list[float]:
    """Percentile CI of the mean of per-query values (e.g. hit@k indicators) over resampled queries."""
    values_N = np.asarray(values_N, dtype=np.float64)
    if num_bootstrap <= 0 or values_N.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = np.concatenate([values_N[rng.integers(0, values_N.size, size=(min(100, num_bootstrap - s), values_N.size))]
                            .mean(axis=1) for s in range(0, num_bootstrap, 100)])
    return _percentile_ci(means, alpha)


def retrieval_ci(sim_IM, caption_image, ks=(1, 5, 10), num_bootstrap: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """CIs of the recalls, resampling image queries (i2t) and caption queries (t2i)."""
    i2t_rank, t2i_rank = retrieval_ranks(sim_IM, caption_image)
    out = {f"i2t_recall@{k}": bootstrap_mean_ci(i2t_rank < k, num_bootstrap, seed) for k in ks}
    out.update({f"t2i_recall@{k}": bootstrap_mean_ci(t2i_rank < k, num_bootstrap, seed + 1) for k in ks})
    return out
