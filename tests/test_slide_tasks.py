"""The synthetic MIL and survival tasks separate trained from untrained encoders.

An untrained encoder (the demo's student architecture, randomly initialised) must be near chance on
the slide cohorts `mmkd synth` writes (MIL AUROC <= 0.60, c-index <= 0.55), while features that know
the tissue patterns solve them. Bags are rendered from `mmkd.synth.slides.plan_cohort` exactly as
the corpus renders them, and scored by the evaluation's own cross-validation (gated ABMIL heads).
"""

import numpy as np
import torch

from mmkd.evaluation.metrics import classification_metrics
from mmkd.evaluation.mil import cross_validate_mil
from mmkd.evaluation.survival import cross_validate_survival
from mmkd.demo.recipe import DemoRecipe
from mmkd.synth.corpus import slide_key
from mmkd.synth.findings import MODALITIES
from mmkd.synth.render import render_sample
from mmkd.synth.slides import plan_cohort

PATCHES = 24  # as in the demo's corpus (SynthSizes.default)


def _cohort(num_slides: int, seed: int = 3):
    cohort = plan_cohort(seed, num_slides, PATCHES)
    labels = np.array([int(s.label == "carcinoma") for s in cohort])
    time = np.array([s.time for s in cohort])
    event = np.array([s.event for s in cohort])
    groups = np.array([s.patient_id for s in cohort])
    return cohort, labels, time, event, groups


def _scores(bags, labels, time, event, groups, seed=0):
    mil = cross_validate_mil(bags, labels, 2, groups_S=groups, seed=seed)
    auroc = classification_metrics(labels, mil.probs_SC)["auroc"]
    surv = cross_validate_survival(bags, time, event, groups_S=groups, seed=seed)
    return auroc, float(np.nanmean(surv["fold_c_index"]))


def test_features_that_know_the_patterns_solve_both_slide_tasks():
    """The tasks are solvable: one-hot patch patterns (what a perfect tissue classifier sees) as bag features."""
    cohort, labels, time, event, groups = _cohort(200)
    patterns = list(MODALITIES["histopathology"])
    rng = np.random.default_rng(0)
    bags = [torch.tensor(np.eye(4)[[patterns.index(p) for p in s.patterns]] + rng.normal(0, 0.1, (PATCHES, 4)),
                         dtype=torch.float32) for s in cohort]
    auroc, c_index = _scores(bags, labels, time, event, groups)
    assert auroc > 0.95 and c_index > 0.62, (auroc, c_index)


def test_an_untrained_encoder_is_near_chance_on_both_slide_tasks():
    from PIL import Image

    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    cohort, labels, time, event, groups = _cohort(160)
    student = create_student("mmkd-tiny-vit", seed=0)
    encoder = OpenClipEncoder(student.model, student.eval_transform, student.tokenizer)
    bags = []
    for s_idx, slide in enumerate(cohort):
        images = [Image.fromarray(render_sample("histopathology", p, 32, slide_key(3, s_idx, i),
                                                difficulty=DemoRecipe().synth_difficulty)[0])
                  for i, p in enumerate(slide.patterns)]
        bags.append(encoder.encode_image(torch.stack([encoder.preprocess(im) for im in images])))
    auroc, c_index = _scores(bags, labels, time, event, groups)
    assert auroc <= 0.60 and c_index <= 0.55, (auroc, c_index)
