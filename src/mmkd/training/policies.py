"""Teacher policies: which teachers teach which sample, as a weight matrix.

Legend: B rows of a batch, T teachers (store order, after exclusions).

A policy maps availability `avail_BT` (bool) to weights `w_BT` >= 0 whose rows sum to 1 where
any teacher is available and to 0 where none is (those samples get the task loss only).
Random draws are a pure function of (seed, dataset index, epoch), so they are the same on
any number of processes and after a resume.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("random-available", "mean-available", "score-weighted", "modality")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = x
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return z ^ (z >> np.uint64(31))


def uniform_draws(seed: int, epoch: int, indices_B: np.ndarray) -> np.ndarray:
    """[B] floats in [0, 1), deterministic in (seed, epoch, index)."""
    with np.errstate(over="ignore"):
        key = (np.asarray(indices_B, dtype=np.uint64) * np.uint64(1_000_003)
               + np.uint64(epoch) * np.uint64(7_919) + np.uint64(seed) * np.uint64(104_729))
        h = _splitmix64(key)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def random_available(avail_BT: np.ndarray, u_B: np.ndarray) -> np.ndarray:
    """One available teacher per row, uniformly (the paper's rule)."""
    counts = avail_BT.sum(axis=1)
    pick = np.floor(u_B * np.maximum(counts, 1)).astype(np.int64)  # the k-th available teacher
    cum = np.cumsum(avail_BT, axis=1) - 1
    w = (avail_BT & (cum == pick[:, None])).astype(np.float32)
    return w


def mean_available(avail_BT: np.ndarray) -> np.ndarray:
    counts = avail_BT.sum(axis=1, keepdims=True)
    return np.where(counts > 0, avail_BT / np.maximum(counts, 1), 0.0).astype(np.float32)


def score_weighted(avail_BT: np.ndarray, scores_BT: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Softmax of the availability scores over the available teachers (NaN scores count as equal)."""
    s = np.nan_to_num(scores_BT.astype(np.float64), nan=0.0) / temperature
    s = np.where(avail_BT, s, -np.inf)
    s = s - np.where(avail_BT.any(axis=1, keepdims=True), s.max(axis=1, keepdims=True), 0.0)
    e = np.where(avail_BT, np.exp(s), 0.0)
    total = e.sum(axis=1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1), 0.0).astype(np.float32)


def modality_routed(avail_BT: np.ndarray, modalities_B: list[str], routes: dict[str, list[str]],
                    teachers: list[str]) -> np.ndarray:
    """The available teachers routed to each sample's modality, equally weighted; others fall back to
    all available teachers when the modality has no route."""
    mask = np.zeros_like(avail_BT)
    for i, modality in enumerate(modalities_B):
        allowed = routes.get(modality)
        mask[i] = [t in allowed for t in teachers] if allowed is not None else True
    return mean_available(avail_BT & mask)


def teacher_weights(policy: str, avail_BT: np.ndarray, *, scores_BT: np.ndarray | None = None,
                    seed: int = 0, epoch: int = 0, indices_B: np.ndarray | None = None,
                    modalities_B: list[str] | None = None, routes: dict[str, list[str]] | None = None,
                    teachers: list[str] | None = None) -> np.ndarray:
    avail_BT = np.asarray(avail_BT, dtype=bool)
    if policy == "random-available":
        if indices_B is None:
            raise ValueError("the random-available policy draws per sample: give indices_B")
        return random_available(avail_BT, uniform_draws(seed, epoch, indices_B))
    if policy == "mean-available":
        return mean_available(avail_BT)
    if policy == "score-weighted":
        return score_weighted(avail_BT, scores_BT if scores_BT is not None else np.zeros(avail_BT.shape))
    if policy == "modality":
        return modality_routed(avail_BT, modalities_B or [""] * len(avail_BT), routes or {}, teachers or [])
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
