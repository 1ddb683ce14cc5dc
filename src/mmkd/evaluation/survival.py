"""Survival prediction from whole slides (`--tasks survival`): gated ABMIL with a survival head.

Legend: S slides, B slides in a batch, K time bins.

Losses (catalog option `survival_loss`):
- `nll` (default): discrete-time survival. Follow-up is cut into K bins at quantiles of the
  training fold's event times (`num_time_bins`, default 4); the head outputs K hazard logits
  l_k, hazard h_k = sigmoid(l_k), survival S_k = prod_{j<=k} (1 - h_j). A slide with an event in
  bin k contributes -log(S_{k-1} h_k); one censored in bin k contributes -log(S_k). Risk score:
  -sum_k S_k (fewer expected bins survived = higher risk).
- `cox`: Cox partial likelihood (Breslow ties) of one risk score per slide, trained full-batch
  so every risk set is complete.

Metric: Harrell's concordance index (`concordance_index`, equal to lifelines' on the same
data) of each held-out fold's risks, averaged over folds (risk scores of different fold models
are not on one scale, so they are not pooled); its CI resamples slides within every fold.
Folds are stratified by event and, with patient_id, grouped by patient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmkd.errors import ConfigError, DataError
from mmkd.evaluation.mil import DEFAULT_FOLDS, make_folds
from mmkd.evaluation.mil_heads import MILTrainConfig, fit_bag_model, predict_bags

LOSSES = ("nll", "cox")
DEFAULT_TIME_BINS = 4


# ---------------------------------------------------------------------------------------------
# Concordance


def concordance_index(time_S, risk_S, event_S, chunk: int = 2048) -> float:
    """Harrell's C: the fraction of comparable pairs whose risks are ordered correctly (ties 0.5).

    A pair (i, j) is comparable when i had an event before j left the study (t_i < t_j), or i had
    an event and j was censored at the same time; tied event times are not comparable (as in
    lifelines). Higher risk = shorter survival. NaN when no pair is comparable. O(S^2) in chunks.
    """
    time_S, risk_S = np.asarray(time_S, dtype=np.float64), np.asarray(risk_S, dtype=np.float64)
    event_S = np.asarray(event_S).astype(bool)
    num_pairs = num_correct = 0.0
    event_rows = np.flatnonzero(event_S)
    for start in range(0, len(event_rows), chunk):
        rows = event_rows[start:start + chunk]
        t_i, r_i = time_S[rows, None], risk_S[rows, None]
        comparable = (t_i < time_S[None]) | ((t_i == time_S[None]) & ~event_S[None])
        num_pairs += comparable.sum()
        num_correct += (comparable & (r_i > risk_S[None])).sum() + 0.5 * (comparable & (r_i == risk_S[None])).sum()
    return float(num_correct / num_pairs) if num_pairs else float("nan")


# ---------------------------------------------------------------------------------------------
# Discrete-time survival


def time_bin_cuts(time_S, event_S, num_bins: int) -> np.ndarray:
    """[K-1] inner cut points at quantiles of the event times (all times when there is no event);
    duplicated quantiles merge bins, so K can come out smaller than asked."""
    time_S, event_S = np.asarray(time_S, dtype=np.float64), np.asarray(event_S).astype(bool)
    ref = time_S[event_S] if event_S.any() else time_S
    cuts = np.quantile(ref, np.linspace(0, 1, num_bins + 1)[1:-1])
    return np.unique(cuts)


def assign_bins(time_S, cuts: np.ndarray) -> np.ndarray:
    """[S] bin index in 0..len(cuts): bin k holds times in (cut_{k-1}, cut_k]."""
    return np.searchsorted(cuts, np.asarray(time_S, dtype=np.float64), side="left").astype(np.int64)


def marginal_hazard_logits(bin_S, event_S, num_bins: int) -> torch.Tensor:
    """[K] logit of each bin's population hazard (events in bin k / slides still at risk in bin k),
    clipped away from 0 and 1: the starting bias of the discrete-time head."""
    bin_S, event_S = np.asarray(bin_S), np.asarray(event_S).astype(bool)
    events_K = np.bincount(bin_S[event_S], minlength=num_bins).astype(np.float64)
    at_risk_K = np.array([(bin_S >= k).sum() for k in range(num_bins)], dtype=np.float64)
    hazard_K = np.clip((events_K + 0.5) / (at_risk_K + 1.0), 1e-3, 1 - 1e-3)
    return torch.as_tensor(np.log(hazard_K / (1 - hazard_K)), dtype=torch.float32)


def discrete_survival_nll(logits_BK: torch.Tensor, bin_B: torch.Tensor, event_B: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of discrete-time survival (see the module doc); stable in log space."""
    log_hazard_BK = F.logsigmoid(logits_BK)
    log_survival_BK = torch.cumsum(F.logsigmoid(-logits_BK), dim=1)  # log S_k
    log_survival_before_BK = F.pad(log_survival_BK[:, :-1], (1, 0))  # log S_{k-1}, S_{-1} = 1
    bin_B1 = bin_B.long().unsqueeze(1)
    event_ll = log_survival_before_BK.gather(1, bin_B1) + log_hazard_BK.gather(1, bin_B1)
    censored_ll = log_survival_BK.gather(1, bin_B1)
    event_B1 = event_B.float().unsqueeze(1)
    return -(event_B1 * event_ll + (1 - event_B1) * censored_ll).mean()


def discrete_risk(logits_SK: torch.Tensor) -> torch.Tensor:
    """[S] risk = -(expected number of bins survived) = -sum_k S_k."""
    return -torch.cumprod(torch.sigmoid(-logits_SK), dim=1).sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Cox


def cox_partial_nll(risk_B: torch.Tensor, time_B: torch.Tensor, event_B: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood per event (Breslow ties): each event i contributes
    -(r_i - log sum_{j: t_j >= t_i} exp(r_j)). Zero (with a graph) when the batch has no event."""
    risk_B = risk_B.reshape(-1)
    at_risk_BB = time_B.reshape(1, -1) >= time_B.reshape(-1, 1)  # row i: who is still at risk at t_i
    log_denominator_B = torch.logsumexp(risk_B.reshape(1, -1).masked_fill(~at_risk_BB, float("-inf")), dim=1)
    events = event_B.bool()
    if not events.any():
        return risk_B.sum() * 0.0
    return -(risk_B[events] - log_denominator_B[events]).mean()


# ---------------------------------------------------------------------------------------------
# Cross-validation


def fit_predict_risk(train_bags, train_time, train_event, test_bags, *, loss: str, num_time_bins: int,
                     config: MILTrainConfig, seed: int) -> np.ndarray:
    """Train a survival ABMIL on the training bags and return the test bags' risk scores [S_test]."""
    time_t = torch.as_tensor(np.asarray(train_time, dtype=np.float32))
    event_t = torch.as_tensor(np.asarray(train_event, dtype=np.int64))
    if loss == "cox":
        model = fit_bag_model(train_bags, 1, lambda out_B1, idx: cox_partial_nll(out_B1, time_t[idx], event_t[idx]),
                              config, seed, full_batch=True)
        return predict_bags(model, test_bags)[:, 0].numpy()
    cuts = time_bin_cuts(train_time, train_event, num_time_bins)
    bin_S = assign_bins(train_time, cuts)
    bin_t = torch.as_tensor(bin_S)
    model = fit_bag_model(train_bags, len(cuts) + 1,
                          lambda logits_BK, idx: discrete_survival_nll(logits_BK, bin_t[idx], event_t[idx]), config, seed,
                          output_bias=marginal_hazard_logits(bin_S, train_event, len(cuts) + 1))
    return discrete_risk(predict_bags(model, test_bags)).numpy()


def cross_validate_survival(bags, time_S, event_S, *, groups_S=None, num_folds: int = DEFAULT_FOLDS,
                            seed: int = 0, loss: str = "nll", num_time_bins: int = DEFAULT_TIME_BINS,
                            config: MILTrainConfig | None = None, what: str = "dataset") -> dict:
    """{"risk_S": out-of-fold risks, "fold_S": fold of each slide, "fold_c_index": [per fold]}."""
    config = config or MILTrainConfig()
    time_S, event_S = np.asarray(time_S, dtype=np.float64), np.asarray(event_S, dtype=np.int64)
    risk_S, fold_S, fold_c = np.zeros(len(bags)), np.full(len(bags), -1), []
    for fold, (train_idx, test_idx) in enumerate(make_folds(event_S, groups_S, num_folds, seed, what)):
        risk_S[test_idx] = fit_predict_risk([bags[i] for i in train_idx], time_S[train_idx], event_S[train_idx],
                                            [bags[i] for i in test_idx], loss=loss, num_time_bins=num_time_bins,
                                            config=config, seed=seed + fold)
        fold_S[test_idx] = fold
        fold_c.append(concordance_index(time_S[test_idx], risk_S[test_idx], event_S[test_idx]))
    return {"risk_S": risk_S, "fold_S": fold_S, "fold_c_index": fold_c}


def fold_mean_c_index_ci(time_S, risk_S, event_S, fold_S, num_bootstrap: int, seed: int,
                         alpha: float = 0.05) -> list[float]:
    """Percentile CI of the fold-averaged c-index, resampling slides with replacement within each fold."""
    rng = np.random.default_rng(seed)
    folds = [np.flatnonzero(fold_S == f) for f in np.unique(fold_S)]
    values = []
    for _ in range(num_bootstrap):
        per_fold = []
        for members in folds:
            pick = rng.choice(members, size=len(members), replace=True)
            per_fold.append(concordance_index(time_S[pick], risk_S[pick], event_S[pick]))
        values.append(np.nanmean(per_fold) if np.isfinite(per_fold).any() else np.nan)
    finite = np.asarray(values)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def _options(entry) -> tuple[str, int, int]:
    where = f"datasets.{entry.name}"
    problems = []
    loss = entry.option("survival_loss", "nll")
    if loss not in LOSSES:
        problems.append(f"{where}.survival_loss: {loss!r} is not allowed; choose from {', '.join(LOSSES)}")
    num_bins, num_folds = entry.option("num_time_bins", DEFAULT_TIME_BINS), entry.option("num_folds", DEFAULT_FOLDS)
    if not isinstance(num_bins, int) or num_bins < 2:
        problems.append(f"{where}.num_time_bins: {num_bins!r} is not allowed; give an integer >= 2 (default {DEFAULT_TIME_BINS})")
    if not isinstance(num_folds, int) or num_folds < 2:
        problems.append(f"{where}.num_folds: {num_folds!r} is not allowed; give an integer >= 2 (default {DEFAULT_FOLDS})")
    if problems:
        raise ConfigError(problems)
    return loss, num_bins, num_folds


def run(model, entry, *, seed: int, cache, num_bootstrap: int) -> dict:
    """The survival task on a catalog `slides` entry with time and event columns (runner contract)."""
    from mmkd.evaluation.slides import load_slide_bags

    loss, num_bins, num_folds = _options(entry)
    config = MILTrainConfig.from_options(entry.raw, where=f"datasets.{entry.name}")
    slides, bags = load_slide_bags(model, entry, cache)
    kept = [i for i, s in enumerate(slides) if s.time is not None and s.event is not None]
    if not kept or sum(slides[i].event or 0 for i in kept) < 2:
        raise DataError(f"dataset {entry.name}: survival needs slides with `time` and `event` columns in slides.csv "
                        f"and at least 2 events (found {len(kept)} slides with both)")
    slides, bags = [slides[i] for i in kept], [bags[i] for i in kept]
    time_S = np.asarray([s.time for s in slides], dtype=np.float64)
    event_S = np.asarray([s.event for s in slides], dtype=np.int64)
    has_patients = any(s.patient_id is not None for s in slides)
    groups_S = np.asarray([s.patient_id or f"slide:{s.slide_id}" for s in slides]) if has_patients else None
    cv = cross_validate_survival(bags, time_S, event_S, groups_S=groups_S, num_folds=num_folds, seed=seed,
                                 loss=loss, num_time_bins=num_bins, config=config, what=f"dataset {entry.name}")
    c_index = float(np.nanmean(cv["fold_c_index"]))
    ci = {"c_index": fold_mean_c_index_ci(time_S, cv["risk_S"], event_S, cv["fold_S"], num_bootstrap, seed)} \
        if num_bootstrap > 0 else {}
    return {
        "metrics": {"c_index": c_index},
        "ci": ci,
        "details": {
            "loss": loss,
            "num_time_bins": num_bins if loss == "nll" else None,
            "fold_c_index": cv["fold_c_index"],
            "c_index_std": float(np.nanstd(cv["fold_c_index"])),
            "num_slides": len(slides),
            "num_events": int(event_S.sum()),
            "num_patients": len(set(groups_S)) if groups_S is not None else None,
            "patient_level_folds": has_patients,
            "num_folds": len(cv["fold_c_index"]),
            "mean_patches_per_slide": float(np.mean([len(b) for b in bags])),
            "head": "gated-abmil",
            "train_config": vars(config),
            "split_sizes": {"slides": len(slides)},
        },
    }
