"""Multi-label zero-shot classification (ChestMNIST, CheXpert observations): per-label AUROC and AP.

Legend: N images, L labels, B bootstrap resamples, D embedding dim.

Each label is a binary task scored by the image's cosine similarity to the label's prompt
embedding (the prompt ensemble of `prompts.class_embeddings`), as CLIP_benchmark scores
multi-label sets: a ranking per label column, so no softmax across labels. Labels are 1
(present), 0 (absent) or -1 (unknown: the image is left out of that label's metrics).

Metrics: `auroc` = mean over labels of the per-label AUROC (labels with positives and negatives),
`mean_average_precision` = mean over labels with a positive of the per-label average precision
(scikit-learn's definitions); per-label values in details. CIs resample images (percentile).
"""

from __future__ import annotations

import numpy as np


def per_label_metrics(labels_NL: np.ndarray, scores_NL: np.ndarray) -> dict[str, list[float]]:
    """{"auroc": [L], "average_precision": [L]} by scikit-learn; NaN where a label cannot be scored."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    auroc, ap = [], []
    for j in range(labels_NL.shape[1]):
        known = labels_NL[:, j] >= 0
        y, s = labels_NL[known, j], scores_NL[known, j]
        num_pos = int(y.sum())
        auroc.append(float(roc_auc_score(y, s)) if 0 < num_pos < len(y) else float("nan"))
        ap.append(float(average_precision_score(y, s)) if num_pos > 0 else float("nan"))
    return {"auroc": auroc, "average_precision": ap}


def multilabel_metrics(labels_NL, scores_NL) -> dict[str, float]:
    """{"auroc": macro per-label AUROC, "mean_average_precision": mean per-label AP}."""
    per = per_label_metrics(np.asarray(labels_NL), np.asarray(scores_NL, dtype=np.float64))
    with np.errstate(all="ignore"):
        return {"auroc": float(np.nanmean(per["auroc"])) if np.isfinite(per["auroc"]).any() else float("nan"),
                "mean_average_precision": float(np.nanmean(per["average_precision"]))
                if np.isfinite(per["average_precision"]).any() else float("nan")}


def _batched_auroc_ap(y_BN: np.ndarray, known_BN: np.ndarray, s_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B] AUROC (rank-sum, ties averaged) and AP (no tie grouping) of one label over B resamples."""
    from scipy.stats import rankdata

    s_BN = np.where(known_BN, s_BN, -np.inf)  # unknown rows rank lowest and count as neither class
    pos_BN, neg_BN = (y_BN == 1) & known_BN, (y_BN == 0) & known_BN
    num_pos, num_neg = pos_BN.sum(1).astype(np.float64), neg_BN.sum(1).astype(np.float64)
    ranks_BN = rankdata(s_BN, axis=1)
    num_unknown = (~known_BN).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (((ranks_BN - num_unknown[:, None]) * pos_BN).sum(1) - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
        order = np.argsort(-s_BN, axis=1, kind="stable")
        hits_BN = np.take_along_axis(pos_BN, order, axis=1)
        precision_BN = np.cumsum(hits_BN, axis=1) / np.arange(1, hits_BN.shape[1] + 1)
        ap = (precision_BN * hits_BN).sum(1) / num_pos
    auroc[(num_pos == 0) | (num_neg == 0)] = np.nan
    ap[num_pos == 0] = np.nan
    return auroc, ap


def bootstrap_multilabel_ci(labels_NL, scores_NL, num_bootstrap: int = 1000, seed: int = 0,
                            alpha: float = 0.05, chunk: int = 50) -> dict[str, list[float]]:
    """Percentile CIs of `auroc` and `mean_average_precision`, resampling images with replacement."""
    from mmkd.evaluation.metrics import _percentile_ci

    labels_NL, scores_NL = np.asarray(labels_NL), np.asarray(scores_NL, dtype=np.float64)
    if num_bootstrap <= 0:
        return {}
    rng = np.random.default_rng(seed)
    num_n, num_l = labels_NL.shape
    auroc_parts, ap_parts = [], []
    for start in range(0, num_bootstrap, chunk):
        idx_BN = rng.integers(0, num_n, size=(min(chunk, num_bootstrap - start), num_n))
        per_label = [_batched_auroc_ap(labels_NL[idx_BN, j], labels_NL[idx_BN, j] >= 0, scores_NL[idx_BN, j])
                     for j in range(num_l)]
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            auroc_parts.append(np.nanmean(np.stack([a for a, _ in per_label], 1), axis=1))
            ap_parts.append(np.nanmean(np.stack([p for _, p in per_label], 1), axis=1))
    return {"auroc": _percentile_ci(np.concatenate(auroc_parts), alpha),
            "mean_average_precision": _percentile_ci(np.concatenate(ap_parts), alpha)}


def evaluate_multilabel(labels_NL: np.ndarray, scores_NL: np.ndarray, classnames: list[str], num_bootstrap: int,
                        seed: int) -> dict:
    """The zero-shot result dict (metrics, ci, per-label details) of multi-label scores."""
    per = per_label_metrics(labels_NL, scores_NL)
    return {
        "metrics": multilabel_metrics(labels_NL, scores_NL),
        "ci": bootstrap_multilabel_ci(labels_NL, scores_NL, num_bootstrap, seed),
        "details": {
            "multilabel": True,
            "per_label_auroc": dict(zip(classnames, per["auroc"])),
            "per_label_average_precision": dict(zip(classnames, per["average_precision"])),
            "positives": {c: int((labels_NL[:, j] == 1).sum()) for j, c in enumerate(classnames)},
            "unknown": {c: int((labels_NL[:, j] < 0).sum()) for j, c in enumerate(classnames)},
        },
    }
