"""Cancer diagnosis from whole slides (`--tasks mil-classification`): gated ABMIL with k-fold CV.

Legend: S slides, C classes, D embedding dim.

Each slide is a bag of frozen patch embeddings (evaluation.slides). A GatedABMIL head
(evaluation.mil_heads) is trained on k-1 folds and predicts the held-out fold; metrics come from
the pooled out-of-fold class probabilities (every slide is predicted exactly once, by a model that
never saw it or, when patient_id is given, any slide of its patient). The per-fold AUROCs are in the
details. Folds are stratified by label (sklearn StratifiedKFold, or StratifiedGroupKFold over
patients).

Catalog options (all optional): `num_folds` (5), `mil_epochs`, `mil_lr`, `mil_batch_size`,
`mil_hidden_dim`, `mil_attn_dim`, `mil_dropout`, `mil_weight_decay`, and the tiling options of
evaluation.slides (`tile_size`, `stride`, `saturation_threshold`, `min_tissue_fraction`, `max_patches`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from mmkd.errors import DataError
from mmkd.evaluation.mil_heads import MILTrainConfig, cross_entropy_loss, fit_bag_model, predict_bags

DEFAULT_FOLDS = 5


def make_folds(strata_S: np.ndarray, groups_S: np.ndarray | None, num_folds: int, seed: int,
               what: str = "dataset") -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_index, test_index) pairs of a k-fold split stratified by `strata_S`; with `groups_S`
    (patient ids) no group is ever on both sides. k is lowered, with a warning, when a stratum
    has fewer members (groups) than k; fewer than 2 per stratum is a DataError."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    strata_S = np.asarray(strata_S)
    units = [len(set(np.asarray(groups_S)[strata_S == s])) if groups_S is not None else int((strata_S == s).sum())
             for s in np.unique(strata_S)]
    k = min(num_folds, min(units))
    if k < 2:
        raise DataError(f"{what}: cross-validation needs at least 2 {'patients' if groups_S is not None else 'slides'} "
                        f"in every class/stratum, the smallest has {min(units)}")
    if k < num_folds:
        warnings.warn(f"{what}: num_folds lowered from {num_folds} to {k} (the smallest class has {min(units)} "
                      f"{'patients' if groups_S is not None else 'slides'})", stacklevel=2)
    if groups_S is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(strata_S)), strata_S))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(strata_S)), strata_S, groups=np.asarray(groups_S)))


@dataclass
class MILResult:
    probs_SC: np.ndarray  # out-of-fold class probabilities
    fold_S: np.ndarray  # the fold that predicted each slide
    fold_auroc: list[float] = field(default_factory=list)


def cross_validate_mil(bags: list[torch.Tensor], labels_S, num_classes: int, *, groups_S=None,
                       num_folds: int = DEFAULT_FOLDS, seed: int = 0, config: MILTrainConfig | None = None,
                       what: str = "dataset") -> MILResult:
    """Out-of-fold probabilities [S, C] of gated-ABMIL heads trained per fold (seed + fold)."""
    from mmkd.evaluation.metrics import classification_metrics

    config = config or MILTrainConfig()
    labels_S = np.asarray(labels_S, dtype=np.int64)
    labels_t = torch.as_tensor(labels_S)
    probs_SC = np.zeros((len(bags), num_classes))
    fold_S = np.full(len(bags), -1)
    fold_auroc = []
    for fold, (train_idx, test_idx) in enumerate(make_folds(labels_S, groups_S, num_folds, seed, what)):
        train_labels = labels_t[train_idx]
        model = fit_bag_model([bags[i] for i in train_idx], num_classes, cross_entropy_loss(train_labels),
                              config, seed=seed + fold)
        logits = predict_bags(model, [bags[i] for i in test_idx])
        probs_SC[test_idx] = torch.softmax(logits, dim=1).numpy()
        fold_S[test_idx] = fold
        fold_auroc.append(classification_metrics(labels_S[test_idx], probs_SC[test_idx])["auroc"])
    return MILResult(probs_SC, fold_S, fold_auroc)


def slide_labels(slides, classnames: list[str] | None, dataset: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classnames, kept slide positions, label indices) of the slides that have a label."""
    kept = [i for i, s in enumerate(slides) if s.label is not None]
    found = sorted({slides[i].label for i in kept})
    if classnames is None:
        classnames = found
    unknown = sorted(set(found) - set(classnames))
    if unknown:
        raise DataError(f"dataset {dataset}: label(s) {unknown} are not among classnames {classnames}; "
                        f"fix slides.csv or the catalog's classnames")
    if len({slides[i].label for i in kept}) < 2:
        raise DataError(f"dataset {dataset}: mil-classification needs labelled slides of at least 2 classes in "
                        f"the `label` column of slides.csv (found {found})")
    index = {c: k for k, c in enumerate(classnames)}
    return list(classnames), np.asarray(kept), np.asarray([index[slides[i].label] for i in kept], dtype=np.int64)


def run(model, entry, *, seed: int, cache, num_bootstrap: int) -> dict:
    """The mil-classification task on a catalog `slides` entry (see the runner's contract)."""
    from mmkd.evaluation.metrics import bootstrap_classification_ci, classification_metrics
    from mmkd.evaluation.slides import load_slide_bags

    slides, bags = load_slide_bags(model, entry, cache)
    classnames, kept, labels_S = slide_labels(slides, entry.classnames, entry.name)
    slides, bags = [slides[i] for i in kept], [bags[i] for i in kept]
    has_patients = any(s.patient_id is not None for s in slides)
    groups_S = np.asarray([s.patient_id or f"slide:{s.slide_id}" for s in slides]) if has_patients else None
    config = MILTrainConfig.from_options(entry.raw, where=f"datasets.{entry.name}")
    num_folds = int(entry.option("num_folds", DEFAULT_FOLDS))
    result = cross_validate_mil(bags, labels_S, len(classnames), groups_S=groups_S, num_folds=num_folds,
                                seed=seed, config=config, what=f"dataset {entry.name}")
    metrics = classification_metrics(labels_S, result.probs_SC)
    ci = bootstrap_classification_ci(labels_S, result.probs_SC, num_bootstrap=num_bootstrap, seed=seed)
    return {
        "metrics": metrics,
        "ci": ci,
        "details": {
            "classnames": classnames,
            "num_slides": len(slides),
            "num_patients": len(set(groups_S)) if groups_S is not None else None,
            "patient_level_folds": has_patients,
            "num_folds": int(result.fold_S.max()) + 1,
            "fold_auroc": result.fold_auroc,
            "class_counts": {c: int((labels_S == k).sum()) for k, c in enumerate(classnames)},
            "mean_patches_per_slide": float(np.mean([len(b) for b in bags])),
            "head": "gated-abmil",
            "train_config": vars(config),
            "split_sizes": {"slides": len(slides)},
        },
    }
