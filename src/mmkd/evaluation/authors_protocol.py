"""Zero-shot classification scored as the MMKD-CLIP authors' evaluation scores it (`mmkd eval --protocol authors`).

Legend: N images, C classes, B bootstrap resamples.

What differs from mmkd's protocol (mmkd.evaluation.zero_shot, mmkd.evaluation.metrics), each as in
wangshansong1/MMKD-CLIP @ 127544c, src/clipeval/eval_zeroshot.py:
- logits: the raw cosine similarity (line 123), turned into probabilities by a softmax (169-170),
  unless its rows already sum to 1 within 1e-3 (289-294); mmkd: softmax(100 x cosine). This
  changes one-vs-rest AUROC on sets of three or more classes (binary AUROC is a ranking of
  p1 - p0 = tanh of half the cosine gap, the same for any scale);
- F1, precision and recall: `average='binary'` (positive class 1) when the labels hold exactly
  two classes, macro otherwise (158-160, 190-192); mmkd: macro always;
- AUROC: binary from p1 - p0 (162-166), otherwise scikit-learn's one-vs-rest macro over the
  probabilities (176), undefined (NaN) when a class of the columns is absent from the labels;
- bootstrap: every resample draws one image of each class first, then N - K images uniformly
  from all (273-287), with numpy's default_rng(42) (219-220, 242-243); each metric restarts the
  generator, so every metric sees the same resamples; CIs are the 2.5 / 97.5 percentiles (237-240).
  mmkd: stratified proportional resamples with the run's --seed.
Metrics stay fractions in [0, 1] (the authors print percentages). Balanced accuracy and top-5
accuracy, which the authors do not compute, are mmkd's, over the same probabilities and resamples.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SEED = 42
AUTHORS_METRICS = ("accuracy", "balanced_accuracy", "auroc", "f1", "precision", "recall")


def authors_probs(cosine_NC: np.ndarray) -> np.ndarray:
    """Softmax of the raw cosine similarities (rows that already sum to 1 within 1e-3 are kept)."""
    cosine_NC = np.asarray(cosine_NC, dtype=np.float64)
    if np.all(np.abs(cosine_NC.sum(axis=1) - 1.0) < 1e-3):
        return cosine_NC
    shifted = np.exp(cosine_NC - cosine_NC.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def authors_bootstrap_indices(y: np.ndarray, num_resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[B, N] indices: per resample one image of each class (in class order), then N - K uniform draws."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    classes = np.unique(y)
    members = [np.flatnonzero(y == c) for c in classes]
    out = np.empty((num_resamples, len(y)), dtype=np.int64)
    for b in range(num_resamples):
        out[b, :len(classes)] = [rng.choice(m) for m in members]
        out[b, len(classes):] = rng.integers(0, len(y), size=len(y) - len(classes))
    return out


def is_binary(y: np.ndarray) -> bool:
    """The authors' `average='binary'` case: exactly two classes in the labels, the positive one labelled 1."""
    present = np.unique(y)
    return len(present) == 2 and 1 in present


def _binary_or_macro(y_BN: np.ndarray, probs_BNC: np.ndarray, binary: bool) -> dict[str, np.ndarray]:
    """Accuracy, F1, precision, recall and AUROC for B resamples at once (definitions above)."""
    from mmkd.evaluation.metrics import _auroc_batched, classification_metrics_batched

    out = classification_metrics_batched(y_BN, probs_BNC)
    if binary:
        pred_BN = probs_BNC.argmax(axis=2)
        tp = ((pred_BN == 1) & (y_BN == 1)).sum(axis=1).astype(np.float64)
        predicted, actual = (pred_BN == 1).sum(axis=1), (y_BN == 1).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["precision"] = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
            out["recall"] = np.where(actual > 0, tp / np.maximum(actual, 1), 0.0)
            out["f1"] = np.where(predicted + actual > 0, 2 * tp / np.maximum(predicted + actual, 1), 0.0)
        margin_BN = probs_BNC[:, :, 1] - probs_BNC[:, :, 0]
        out["auroc"] = _auroc_batched(y_BN, np.stack([-margin_BN, margin_BN], axis=2))
    elif len(np.unique(y_BN[0])) != probs_BNC.shape[2]:  # scikit-learn's OvR refuses; the authors record NaN
        out["auroc"] = np.full(len(y_BN), np.nan)
    return out


def authors_classification(y_true, cosine_NC, num_bootstrap: int = 1000,
                           seed: int = BOOTSTRAP_SEED) -> tuple[dict[str, float], dict[str, list[float]], np.ndarray]:
    """(metrics, 95 % CIs, probabilities [N, C]) of zero-shot classification under the authors' protocol."""
    from mmkd.evaluation.metrics import _percentile_ci

    y_true = np.asarray(y_true, dtype=np.int64)
    probs_NC = authors_probs(cosine_NC)
    binary = is_binary(y_true)
    point = _binary_or_macro(y_true[None], probs_NC[None], binary)
    metrics = {k: float(point[k][0]) for k in AUTHORS_METRICS}
    if num_bootstrap <= 0:
        return metrics, {}, probs_NC
    idx_BN = authors_bootstrap_indices(y_true, num_bootstrap, seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in AUTHORS_METRICS}
    for start in range(0, num_bootstrap, 100):
        sel = idx_BN[start:start + 100]
        for k, v in _binary_or_macro(y_true[sel], probs_NC[sel], binary).items():
            parts[k].append(v)
    ci = {k: _percentile_ci(np.concatenate(v), 0.05) for k, v in parts.items()}
    return metrics, ci, probs_NC
