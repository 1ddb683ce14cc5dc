"""Survival: c-index equal to lifelines', the losses against naive loops, time bins, planted-risk
bags found by both heads (chance when shuffled), and one run from slide images through the runner."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch


def test_c_index_equals_lifelines_on_random_data():
    from lifelines.utils import concordance_index as lifelines_c

    from mmkd.evaluation.survival import concordance_index

    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 120))
        # integer times and risks make ties in both, which is where definitions differ
        time = rng.integers(0, 12, n).astype(float) if trial % 2 else rng.exponential(size=n)
        risk = rng.integers(0, 4, n).astype(float) if trial % 3 == 0 else rng.normal(size=n)
        event = rng.random(n) < rng.uniform(0.2, 0.9)
        event[0] = True
        # lifelines scores predicted survival times (higher = lives longer); ours scores risk
        assert concordance_index(time, risk, event) == pytest.approx(lifelines_c(time, -risk, event), abs=1e-12)
    assert math.isnan(concordance_index([1.0, 2.0], [0.3, 0.1], [0, 0]))  # no comparable pair


def naive_cox_nll(risk, time, event):
    terms = [risk[i] - math.log(sum(math.exp(risk[j]) for j in range(len(risk)) if time[j] >= time[i]))
             for i in range(len(risk)) if event[i]]
    return -sum(terms) / len(terms)


def naive_discrete_nll(logits, bins, events):
    total = 0.0
    for row, k, e in zip(logits, bins, events):
        hazard = [1 / (1 + math.exp(-v)) for v in row]
        survival_before = math.prod(1 - h for h in hazard[:k])
        total -= math.log(survival_before * hazard[k]) if e else math.log(survival_before * (1 - hazard[k]))
    return total / len(logits)


def test_losses_match_naive_loops():
    from mmkd.evaluation.survival import cox_partial_nll, discrete_survival_nll

    rng = np.random.default_rng(1)
    risk = rng.normal(size=12)
    time = rng.integers(0, 5, 12).astype(float)  # ties: Breslow keeps all tied slides in the risk set
    event = rng.random(12) < 0.6
    got = cox_partial_nll(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert got.item() == pytest.approx(naive_cox_nll(risk, time, event), rel=1e-9)
    assert cox_partial_nll(torch.tensor(risk), torch.tensor(time), torch.zeros(12)).item() == 0.0

    logits = rng.normal(size=(12, 4)) * 2
    bins = rng.integers(0, 4, 12)
    got = discrete_survival_nll(torch.tensor(logits), torch.tensor(bins), torch.tensor(event))
    assert got.item() == pytest.approx(naive_discrete_nll(logits, bins, event), rel=1e-9)


def test_time_bins_follow_event_quantiles():
    from mmkd.evaluation.survival import assign_bins, discrete_risk, time_bin_cuts

    time = np.arange(1.0, 101.0)
    event = np.ones(100, dtype=int)
    event[::2] = 0  # censored at odd times, events at even times 2..100
    cuts = time_bin_cuts(time, event, 4)
    np.testing.assert_allclose(cuts, np.quantile(np.arange(2.0, 101.0, 2), [0.25, 0.5, 0.75]))
    bins = assign_bins(time, cuts)
    assert bins.min() == 0 and bins.max() == 3 and (np.diff(bins) >= 0).all()
    assert np.bincount(bins[event == 1]).tolist() == [13, 12, 12, 13]
    # higher hazards everywhere mean a higher risk score
    assert discrete_risk(torch.tensor([[2.0, 2.0], [-2.0, -2.0]])).argmax().item() == 0


def planted_survival_bags(num_slides: int = 64, dim: int = 32, seed: int = 0):
    """Bags of 10-29 random unit vectors; half the slides also hold 2-5 patches pushed along a hidden
    direction u, and those slides die sooner: log T = -1.5 * planted + N(0, 0.5^2), random censoring
    (~35 %). Returns (bags, time [S], event [S], planted [S])."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    planted = rng.permutation(np.arange(num_slides) % 2)
    bags = []
    for p in planted:
        x = rng.normal(size=(rng.integers(10, 30), dim))
        k = rng.integers(2, 6) if p else 0
        x[:k] += 3.0 * u
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        bags.append(torch.tensor(x[rng.permutation(len(x))], dtype=torch.float32))
    event_time = np.exp(-1.5 * planted + rng.normal(0, 0.5, num_slides))
    censor_time = rng.exponential(3 * np.median(event_time), size=num_slides)
    return bags, np.minimum(event_time, censor_time), (event_time <= censor_time).astype(int), planted


@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_survival_heads_find_the_planted_feature_and_not_shuffled_times(loss):
    from mmkd.evaluation.survival import concordance_index, cross_validate_survival

    bags, time, event, planted = planted_survival_bags(seed=0)
    oracle = concordance_index(time, planted, event)  # knowing the planted flag exactly (~0.78)
    cv = cross_validate_survival(bags, time, event, num_folds=4, seed=0, loss=loss)
    c_index = float(np.mean(cv["fold_c_index"]))
    assert c_index > 0.65 and c_index <= oracle + 0.05, (c_index, oracle)

    shuffled = []  # two permutations: a fold-averaged c-index of 16-slide folds is noisy
    for p in range(2):
        perm = np.random.default_rng(p).permutation(len(bags))
        cv = cross_validate_survival(bags, time[perm], event[perm], num_folds=4, seed=p, loss=loss)
        shuffled.append(np.mean(cv["fold_c_index"]))
    assert abs(np.mean(shuffled) - 0.5) < 0.12, shuffled


def test_fold_mean_ci_brackets_the_estimate():
    from mmkd.evaluation.survival import concordance_index, fold_mean_c_index_ci

    rng = np.random.default_rng(0)
    time, event = rng.exponential(size=80), (rng.random(80) < 0.7).astype(int)
    risk = -time + rng.normal(0, 0.5, 80)  # informative
    fold = np.arange(80) % 4
    mean = np.mean([concordance_index(time[fold == f], risk[fold == f], event[fold == f]) for f in range(4)])
    lo, hi = fold_mean_c_index_ci(time, risk, event, fold, num_bootstrap=200, seed=0)
    assert lo < mean < hi and 0.5 < lo and hi <= 1.0


# ---------------------------------------------------------------------------------------------
# End to end: large slide images (tiled) -> tiny CLIP -> bags -> survival head -> result JSON


def write_survival_slides(root: Path, num_slides: int = 24, seed: int = 0) -> Path:
    """PNG slides of 3x4 tiles of 32 px on white glass: tissue tiles are pink, and a slide with risk k
    has k of them dark blue; survival time falls with k. One PNG per slide, tiled by mmkd."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for s in range(num_slides):
        k = s % 4
        img = np.full((96, 128, 3), 245, dtype=np.uint8)
        tissue = rng.permutation(12)[:8]  # 8 of 12 tiles hold tissue
        for j, t in enumerate(tissue):
            y, x = divmod(int(t), 4)
            colour = (40, 40, 150) if j < k else (200, 110, 170)
            img[y * 32:(y + 1) * 32, x * 32:(x + 1) * 32] = np.clip(colour + rng.normal(0, 12, (32, 32, 3)), 0, 255)
        Image.fromarray(img).save(root / f"slide{s}.png")
        time = float(10 * math.exp(-0.8 * k + rng.normal(0, 0.4)))
        rows.append([f"slide{s}", f"slide{s}.png", f"{time:.4f}", int(rng.random() < 0.8)])
    with open(root / "slides.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "path", "time", "event"])
        w.writerows(rows)
    return root


def test_survival_end_to_end(tmp_path, loss="nll"):
    from mmkd.evaluation.runner import FeatureCache, evaluate
    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    s = create_student("mmkd-tiny-vit", seed=0)
    model = OpenClipEncoder(s.model, s.eval_transform, s.tokenizer, name="tiny")
    write_survival_slides(tmp_path / "slides")
    catalog = {"datasets": {"toy-surv": {"tasks": ["survival"], "format": "slides", "path": str(tmp_path / "slides"),
                                         "tile_size": 32, "num_folds": 3, "survival_loss": loss}}}
    [record] = evaluate(model, catalog, ["survival"], tmp_path / "out", num_bootstrap=50,
                        cache=FeatureCache(tmp_path / "cache"))
    saved = json.loads((tmp_path / "out" / "tiny" / "toy-surv__survival.json").read_text())
    assert saved["metrics"] == record["metrics"] and list(saved["metrics"]) == ["c_index"]
    details = saved["details"]
    assert details["loss"] == loss and details["num_slides"] == 24 and details["mean_patches_per_slide"] == 8
    assert len(details["fold_c_index"]) == 3
    assert saved["metrics"]["c_index"] == pytest.approx(np.mean(details["fold_c_index"]))
    assert saved["metrics"]["c_index"] > 0.7, details["fold_c_index"]
    lo, hi = saved["ci"]["c_index"]
    assert lo <= saved["metrics"]["c_index"] <= hi


def test_bad_survival_options_are_named(tmp_path):
    from mmkd.errors import UsageError
    from mmkd.evaluation.runner import DatasetEntry
    from mmkd.evaluation.survival import run

    entry = DatasetEntry(name="s", tasks=["survival"], format="slides", path=tmp_path,
                         raw={"survival_loss": "weibull", "num_time_bins": 1})
    with pytest.raises(UsageError) as err:
        run(None, entry, seed=0, cache=None, num_bootstrap=0)
    assert "datasets.s.survival_loss" in str(err.value) and "datasets.s.num_time_bins" in str(err.value)
