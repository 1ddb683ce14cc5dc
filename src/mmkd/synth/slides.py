"""Synthetic whole-slide cohorts: bags of histopathology patches in which only a trained eye finds the tumour.

Each patient has one or two slides; a slide is a folder of patch images. Every slide, whatever its
label, carries a share d ~ U(DENSE_SHARE) of *dense-nuclei* patches: on a benign slide they are all
inflammation; on a carcinoma slide (half of the patients) TUMOUR_PATCHES of them (1 or 2, drawn per
patient) are carcinoma instead. The rest are normal tissue (70 %) or necrosis (30 %). Inflammation is
the look-alike: an untrained encoder separates carcinoma from it far worse than from the other
patterns (measured at 32 px: a logistic regression on the features of a randomly initialised
`mmkd-tiny-vit` tells carcinoma from inflammation patches 0.72-0.77 of the time, from normal tissue
0.93; a histopathology expert trained on 800 captioned patches 0.98-1.00), and the tumour is one or two
patches among PATCHES_PER_SLIDE, so its colour barely moves a slide's average. Diagnosis therefore
needs patch-level recognition of carcinoma (what attention MIL on trained features does), not slide
statistics (what random features offer).

Survival is planted through the same tumour: the event time is exponential with hazard
h = exp(LOG_HAZARD_PER_TUMOUR_PATCH · n) / 60 per month (n: carcinoma patches of the patient's first
slide, 0 when benign), censored uniformly in [6, 120] months. Times are in months, rounded to 0.1;
`event` is 1 for death observed, 0 for censored.

`section` keys independent cohorts of one seed (the corpus draws a test and a validation cohort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SLIDE_CLASSNAMES = ["benign", "carcinoma"]
DENSE_SHARE = (0.45, 0.85)  # share of dense-nuclei patches (inflammation, or carcinoma on a tumour slide)
TUMOUR_PATCHES = (1, 2)  # carcinoma patches of a carcinoma slide, drawn uniformly per patient
OTHER_PATTERNS: tuple[tuple[str, float], ...] = (("normal", 0.7), ("necrosis", 0.3))
LOG_HAZARD_PER_TUMOUR_PATCH = 1.25
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


def plan_cohort(seed: int, num_slides: int, patches_per_slide: int, section: int = 5) -> list[SlidePlan]:
    """The slides of a cohort (patterns per patch, label, survival), deterministic in (seed, section)."""
    rng = np.random.default_rng([seed, section, 1])
    # patients of one or two slides until num_slides slides exist
    slides_of: list[int] = []
    while sum(slides_of) < num_slides:
        slides_of.append(min(int(rng.choice([1, 2], p=[0.7, 0.3])), num_slides - sum(slides_of)))
    num_patients = len(slides_of)
    has_tumour = np.zeros(num_patients, bool)
    has_tumour[rng.permutation(num_patients)[: (num_patients + 1) // 2]] = True
    names, probs = [n for n, _ in OTHER_PATTERNS], [q for _, q in OTHER_PATTERNS]
    plans: list[SlidePlan] = []
    for p in range(num_patients):
        num_tumour = int(rng.integers(TUMOUR_PATCHES[0], TUMOUR_PATCHES[1] + 1)) if has_tumour[p] else 0
        first_tumour: int | None = None
        patient_plans = []
        for _ in range(slides_of[p]):
            num_dense = max(num_tumour, 1, int(round(rng.uniform(*DENSE_SHARE) * patches_per_slide)))
            patterns = (["carcinoma"] * num_tumour + ["inflammation"] * (num_dense - num_tumour)
                        + list(rng.choice(names, size=patches_per_slide - num_dense, p=probs)))
            patterns = [str(patterns[i]) for i in rng.permutation(patches_per_slide)]
            first_tumour = num_tumour if first_tumour is None else first_tumour
            patient_plans.append(SlidePlan(f"S{len(plans) + len(patient_plans):04d}", f"P{p:04d}",
                                           SLIDE_CLASSNAMES[int(has_tumour[p])], patterns,
                                           num_tumour / patches_per_slide, 0.0, 0))
        assert first_tumour is not None  # every patient has at least one slide
        hazard = BASELINE_HAZARD_PER_MONTH * np.exp(LOG_HAZARD_PER_TUMOUR_PATCH * first_tumour)
        event_time, censor_time = rng.exponential(1.0 / hazard), rng.uniform(6.0, 120.0)
        time = max(0.1, round(float(min(event_time, censor_time)), 1))
        for plan in patient_plans:
            plan.time, plan.event = time, int(event_time <= censor_time)
        plans.extend(patient_plans)
    return plans
