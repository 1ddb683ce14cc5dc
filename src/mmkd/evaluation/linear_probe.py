"""Linear probing: logistic regression on frozen, cached image features.

Legend: N samples, D embedding dim, C classes.

Splits: the model is fitted on `train`, its inverse regularisation C is chosen on `val` (by
balanced accuracy, ties to the smaller C), and it is scored on the evaluation split (test by
default). When the data has no val split, a stratified VAL_FRACTION of train is held out for it;
when it has only one split, that split is divided 60/20/20 (stratified, seeded).

Settings (catalog options, defaults below): `fractions` of the training set (stratified, at
least one image per class) and `shots` (k training images per class); `c_grid` overrides the
values of C searched. The headline metrics
are those of the largest fraction (100 % by default); every setting's metrics are in
details["settings"].
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mmkd.errors import UsageError

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_SHOTS = (1, 4, 16)
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
VAL_FRACTION = 0.2
MAX_ITER = 1000


def stratified_take(y: np.ndarray, rng: np.random.Generator, *, fraction: float = 1.0,
                    shots: int | None = None) -> np.ndarray:
    """Sorted indices of a per-class subsample: min(shots, n_c) per class if `shots` is given, else
    ceil(fraction · n_c) (≥ 1)."""
    chosen = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        num = min(len(members), shots) if shots is not None else max(1, int(np.ceil(fraction * len(members))))
        chosen.append(rng.choice(members, size=num, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out) indices with `fraction` of every class (≥ 1 where a class has ≥ 2) held out."""
    held = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        num = int(round(fraction * len(members)))
        num = max(1, num) if len(members) >= 2 else 0
        held.append(members[:num])
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), held_out), held_out


def fit_probe(x_train, y_train, x_val, y_val, seed: int, c_grid=C_GRID):
    """Logistic regression with C picked on (x_val, y_val) by balanced accuracy; returns (model, C, val score).

    The grid is walked from strong to weak regularisation with warm starts (the L2 objective is
    strictly convex, so each fit converges to the same optimum as a cold start, in fewer steps).
    """
    import copy

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    clf = LogisticRegression(max_iter=MAX_ITER, random_state=seed, warm_start=True)
    best = None
    for c in sorted(c_grid):
        clf.C = c
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on tiny subsets
            clf.fit(x_train, y_train)
            score = balanced_accuracy_score(y_val, clf.predict(x_val))
        if best is None or score > best[2] + 1e-12:
            best = (copy.deepcopy(clf), c, float(score))
    return best


def _full_scores(clf, x, num_classes: int) -> np.ndarray:
    """[N, C] probabilities with a column for every class, also those absent from the fitted subset."""
    probs = np.zeros((len(x), num_classes))
    probs[:, clf.classes_] = clf.predict_proba(x)
    return probs


def _splits(entry, data, rng) -> tuple[str, dict[str, tuple[str, np.ndarray]]]:
    """Evaluation split name, and for train/val/test the (source split, indices) they are drawn from."""
    from mmkd.evaluation.datasets import pick_split

    test_split = pick_split(list(data.splits), entry.split, entry.name)
    test = (test_split, np.arange(len(data.splits[test_split])))
    if "train" in data.splits and test_split != "train":
        train_all = np.arange(len(data.splits["train"]))
        if "val" in data.splits and test_split != "val":
            return test_split, {"train": ("train", train_all), "val": ("val", np.arange(len(data.splits["val"]))),
                                "test": test}
        rest, held = stratified_split(data.splits["train"].labels, VAL_FRACTION, rng)
        return test_split, {"train": ("train", rest), "val": ("train", held), "test": test}
    y = data.splits[test_split].labels
    rest, test_idx = stratified_split(y, 0.2, rng)
    train_idx, val_rel = stratified_split(y[rest], 0.25, rng)
    return test_split, {"train": (test_split, rest[train_idx]), "val": (test_split, rest[val_rel]),
                        "test": (test_split, test_idx)}


def run(model, entry, *, seed: int, cache, num_bootstrap: int) -> dict:
    from mmkd.evaluation.datasets import load_classification
    from mmkd.evaluation.metrics import bootstrap_classification_ci, classification_metrics

    data = load_classification(entry)
    rng = np.random.default_rng(seed)
    test_split, parts = _splits(entry, data, rng)
    feats = {name: cache.image_features(model, entry.name, name, data.splits[name].images).numpy()
             for name in {src for src, _ in parts.values()}}
    x = {k: feats[src][idx] for k, (src, idx) in parts.items()}
    y = {k: data.splits[src].labels[idx] for k, (src, idx) in parts.items()}
    if len(np.unique(y["train"])) < 2:
        raise UsageError(f"dataset {entry.name}: the training split has fewer than two classes; a linear probe needs two")
    num_classes = len(data.classnames)
    fractions = sorted(float(f) for f in entry.option("fractions", DEFAULT_FRACTIONS))
    shots = sorted(int(k) for k in entry.option("shots", DEFAULT_SHOTS))
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UsageError(f"datasets.{entry.name}.fractions: {bad} must lie in (0, 1]")
    c_grid = tuple(float(c) for c in entry.option("c_grid", C_GRID))
    settings: list[tuple[str, dict[str, Any]]] = [(f"fraction={f:g}", {"fraction": f}) for f in fractions]
    settings += [(f"shots={k}", {"shots": k}) for k in shots]
    results, headline = {}, None
    for label, how in settings:
        idx = stratified_take(y["train"], np.random.default_rng([seed, len(results)]), **how)
        if len(np.unique(y["train"][idx])) < 2:
            continue
        clf, c, val_score = fit_probe(x["train"][idx], y["train"][idx], x["val"], y["val"], seed, c_grid)
        probs_NC = _full_scores(clf, x["test"], num_classes)
        results[label] = {**classification_metrics(y["test"], probs_NC), "C": c, "val_balanced_accuracy": val_score,
                          "num_train": int(len(idx))}
        if how.get("fraction") == fractions[-1]:
            headline = (label, probs_NC)
    if headline is None:
        raise UsageError(f"dataset {entry.name}: no linear-probe setting could be fitted")
    label, probs_NC = headline
    metrics = {k: v for k, v in results[label].items() if k not in ("C", "val_balanced_accuracy", "num_train")}
    return {
        "metrics": metrics,
        "ci": bootstrap_classification_ci(y["test"], probs_NC, num_bootstrap, seed),
        "split_sizes": {k: int(len(v)) for k, v in y.items()},
        "details": {"test_split": test_split, "headline_setting": label, "settings": results,
                    "classnames": data.classnames, "c_grid": list(c_grid), "selection": "val balanced_accuracy",
                    "split_sources": {k: src for k, (src, _) in parts.items()}},
    }
