"""Synthetic whole-slide cohorts: bags of histopathology patches with a planted tumour share.

Each patient has one or two slides; a slide is a folder of patch images. Half of the patients
have carcinoma: a share s ~ U(0.15, 0.75) of their patches show the carcinoma pattern, the
rest are drawn from the benign patterns (normal 60 %, inflammation 25 %, necrosis 15 %);
benign patients have no carcinoma patch at all. So the diagnosis is readable only from the
patches that carry the tumour pattern (what attention MIL must find).

Survival is planted through the same share: the event time is exponential with hazard
h = exp(3 · s) / 60 per month (s is the realised share of the patient's first slide), censored
uniformly in [6, 120] months. Higher tumour share, shorter survival. Times are in months,
rounded to 0.1; `event` is 1 for death observed, 0 for censored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SLIDE_CLASSNAMES = ["benign", "carcinoma"]
BENIGN_PATTERNS: tuple[tuple[str, float], ...] = (("normal", 0.6), ("inflammation", 0.25), ("necrosis", 0.15))
HAZARD_BETA = 3.0
BASELINE_HAZARD_PER_MONTH = 1.0 / 60.0


@dataclass
class SlidePlan:
    slide_id: str
    patient_id: str
    label: str  # "benign" | "carcinoma"
    patterns: list[str]  # per patch, in file order (patch_000, patch_001, ...)
    tumour_share: float  # realised share of carcinoma patches
    time: float  # months
    event: int


def plan_cohort(seed: int, num_slides: int, patches_per_slide: int) -> list[SlidePlan]:
    """The slides of a cohort (patterns per patch, label, survival), deterministic in the seed."""
    rng = np.random.default_rng([seed, 5, 0])
    # patients of one or two slides until num_slides slides exist
    slides_of: list[int] = []
    while sum(slides_of) < num_slides:
        slides_of.append(min(int(rng.choice([1, 2], p=[0.7, 0.3])), num_slides - sum(slides_of)))
    num_patients = len(slides_of)
    has_tumour = np.zeros(num_patients, bool)
    has_tumour[rng.permutation(num_patients)[: (num_patients + 1) // 2]] = True
    names, probs = [n for n, _ in BENIGN_PATTERNS], [q for _, q in BENIGN_PATTERNS]
    plans: list[SlidePlan] = []
    for p in range(num_patients):
        target = rng.uniform(0.15, 0.75) if has_tumour[p] else 0.0
        first_share: float | None = None
        patient_plans = []
        for _ in range(slides_of[p]):
            n_tumour = max(1, int(round(target * patches_per_slide))) if has_tumour[p] else 0
            patterns = ["carcinoma"] * n_tumour + list(rng.choice(names, size=patches_per_slide - n_tumour, p=probs))
            patterns = [str(patterns[i]) for i in rng.permutation(patches_per_slide)]
            share = n_tumour / patches_per_slide
            first_share = share if first_share is None else first_share
            patient_plans.append(SlidePlan(f"S{len(plans) + len(patient_plans):04d}", f"P{p:04d}",
                                           SLIDE_CLASSNAMES[int(has_tumour[p])], patterns, share, 0.0, 0))
        assert first_share is not None  # every patient has at least one slide
        hazard = BASELINE_HAZARD_PER_MONTH * np.exp(HAZARD_BETA * first_share)
        event_time, censor_time = rng.exponential(1.0 / hazard), rng.uniform(6.0, 120.0)
        time = max(0.1, round(float(min(event_time, censor_time)), 1))
        for plan in patient_plans:
            plan.time, plan.event = time, int(event_time <= censor_time)
        plans.extend(patient_plans)
    return plans
