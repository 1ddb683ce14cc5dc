"""CLIP_benchmark's metric names for mmkd results (LAION-AI/CLIP_benchmark, `clip_benchmark eval`).

Every result JSON carries `clip_benchmark: {name: value}` beside mmkd's own metrics, so numbers can
be compared with a CLIP_benchmark result file key by key:

| CLIP_benchmark | mmkd |
|---|---|
| acc1 | accuracy |
| acc5 | top5_accuracy (null with fewer than 5 classes, where CLIP_benchmark reports NaN) |
| mean_per_class_recall | balanced_accuracy |
| mean_average_precision (multi-label) | mean_average_precision |
| image_retrieval_recall@k (text -> image) | t2i_recall@k |
| text_retrieval_recall@k (image -> text) | i2t_recall@k |

Retrieval recalls agree exactly when no two candidates tie in score: CLIP_benchmark takes
torch.topk's arbitrary order among ties, mmkd counts a tie against the query.
"""

from __future__ import annotations

import re

import numpy as np

CLASSIFICATION_NAMES = {"acc1": "accuracy", "acc5": "top5_accuracy", "mean_per_class_recall": "balanced_accuracy",
                        "mean_average_precision": "mean_average_precision"}


def topk_accuracy(y_true: np.ndarray, scores_NC: np.ndarray, k: int = 5) -> float | None:
    """Fraction of samples whose true class is among the k highest scores; None when C < k (CLIP_benchmark
    reports NaN there; None is JSON's null, and a result compares equal to itself)."""
    scores_NC = np.asarray(scores_NC)
    if scores_NC.shape[1] < k:
        return None
    top_NK = np.argpartition(-scores_NC, k - 1, axis=1)[:, :k]
    return float((top_NK == np.asarray(y_true)[:, None]).any(axis=1).mean())


def clip_benchmark_metrics(task: str, metrics: dict[str, float | None]) -> dict[str, float | None]:
    """The result's metrics under CLIP_benchmark's names (only those it defines for the task)."""
    out: dict[str, float | None] = {}
    if task in ("zero-shot", "linear-probe"):
        for theirs, ours in CLASSIFICATION_NAMES.items():
            if ours in metrics:
                out[theirs] = metrics[ours]
    elif task == "retrieval":
        for name, value in metrics.items():
            m = re.fullmatch(r"(i2t|t2i)_recall@(\d+)", name)
            if m:
                theirs = "text_retrieval_recall" if m.group(1) == "i2t" else "image_retrieval_recall"
                out[f"{theirs}@{m.group(2)}"] = value
    return out
