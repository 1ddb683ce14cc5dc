"""What `mmkd demo` trains: the data assignment, the teachers, the student and the stage-2 variants.

One recipe for the full demo (`make demo`, about 10 minutes on 2 CPU cores) and one for
`--quick` (tests). Everything is plain data, written to `DIR/recipe.json`; a step reruns when
the part of the recipe it depends on changes.

Modalities (the `modality` column of the corpora): synthetic `ct`, `mri`, `histopathology`,
`dermoscopy` (`mmkd synth`) and real `chest-xray`, `breast-ultrasound`, `fundus`,
`blood-cells` (the shipped real-mini images, captions made from class names).

Teachers are experts: each sees *all* captioned pairs of its modalities, with a finer-patch
image tower and more epochs than the student; the weak generalist sees 10 % of every
modality. The student sees a stratified `student_fraction` of every modality's pairs; the rest
of the images are image-only samples (no caption) that decision distillation may use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SYNTH_MODALITIES = ("ct", "mri", "histopathology", "dermoscopy")
REAL_MODALITIES = ("chest-xray", "breast-ultrasound", "fundus", "blood-cells")


@dataclass(frozen=True)
class TeacherPlan:
    """One teacher: its name, what it sees, its format and how long it trains.

    `modalities` empty means "a `fraction` of every modality" (the weak generalist).
    `kind`: `open_clip` (trained by mmkd pretrain, exported as a `local-dir:` folder) or `hf`
    (a transformers CLIPModel with its own word-level tokenizer, saved with save_pretrained).
    """

    name: str
    modalities: tuple[str, ...]
    kind: str = "open_clip"
    model: str = "mmkd-demo-teacher"
    epochs: int = 8
    lr: float = 1e-3
    fraction: float = 1.0


# Stage-2 variants: name -> dotted overrides of `mmkd distill` (beside the shared schedule).
# `control` is the same run with every distillation weight at 0: the CLIP loss alone.
STAGE2_VARIANTS: dict[str, dict[str, Any]] = {
    "control": {"distill.target_space": "relational", "distill.lambda_kl": 0.0, "distill.lambda_fd": 0.0,
                "distill.lambda_icl": 0.0},
    "projection": {"distill.target_space": "projection", "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0},
    "adaptor": {"distill.target_space": "adaptor", "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0},
    "relational": {"distill.target_space": "relational", "distill.lambda_kl": 1.0},
    "decision": {"distill.target_space": "decision", "distill.lambda_decision": 1.0, "distill.lambda_kl": 0.0},
    # The same, but an expert labels a modality only where it beats the stage-1 student zero-shot on
    # the student's own captioned pairs (`mmkd.demo.steps.gate_experts`).
    "decision-gated": {"distill.target_space": "decision", "distill.lambda_decision": 1.0, "distill.lambda_kl": 0.0},
    "decision+projection": {"distill.target_space": "projection", "distill.lambda_decision": 1.0,
                            "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0},
    # The teacher policies, in the paper's projection space (`projection` draws one random available teacher).
    "projection-mean": {"distill.target_space": "projection", "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0,
                        "distill.policy": "mean-available"},
    "projection-score": {"distill.target_space": "projection", "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0,
                         "distill.policy": "score-weighted"},
    "projection-modality": {"distill.target_space": "projection", "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0,
                            "distill.policy": "modality"},  # routes: each modality -> its experts (`routes()`)
    # The MMKD-CLIP authors' stage 2 as configs/mmkd_b16/distill-paper.yaml holds it (their loss terms,
    # linear projection targets, no clipping), on the demo's shared schedule (lr, steps, warm-up) so that
    # it compares with the other variants; `projection` is the same space with mmkd's defaults.
    "paper-exact": {"distill.target_space": "projection", "distill.projection": "linear", "distill.icl_form": "paper",
                    "distill.normalize_targets": False, "distill.learnable_icl_temperature": False,
                    "distill.icl_temperature": 1 / math.log(1 / 0.07), "distill.lambda_fd": 50.0,
                    "distill.lambda_icl": 1.0, "distill.policy": "random-available", "optim.grad_clip": 0.0},
    # Both: the gated experts' decisions on image-only samples and their features on the pairs.
    "decision-gated+projection-modality": {"distill.target_space": "projection", "distill.lambda_decision": 1.0,
                                           "distill.lambda_fd": 50.0, "distill.lambda_icl": 1.0,
                                           "distill.policy": "modality"},
}
# Controls for decision distillation (docs/DISTILLATION.md, "Protocol"):
# `self-label` -- the same steps, images and vocabulary as a gated decision variant, but the targets
# are the stage-1 student's own zero-shot probabilities: no teacher at all. What a decision variant
# gains over it is what its teachers add beyond "more images + a prompt objective".
STAGE2_VARIANTS["self-label"] = {"distill.target_space": "decision", "distill.lambda_decision": 1.0,
                                 "distill.lambda_kl": 0.0}
# `self-distill` -- the whole stage-2 path with the stage-1 student as the only teacher: its features
# extracted into a store of its own and aligned, its decisions over the same vocabulary on the same
# image-only images (the modalities the gate kept), every term of `SELF_DISTILL_OF` on, the same steps.
# What a variant gains over it is what the teachers add; the claim "the gain is the teachers'" is made
# against it only.
SELF_DISTILL = "self-distill"
SELF_DISTILL_OF = "decision-gated+projection-modality"
STAGE2_VARIANTS[SELF_DISTILL] = dict(STAGE2_VARIANTS[SELF_DISTILL_OF])
# `NAME:caption-vocab` -- variant NAME with the decision vocabulary made of the student's training
# captions of each class instead of the evaluation's prompt templates. The captions keep the class
# names (every PBC caption names its class): it removes the templates, not the names.
CAPTION_VOCAB = ":caption-vocab"
# `NAME:caption-vocab-no-names` -- the same, from the captions that name no class of their modality
# (the evaluation's class names, compared without case and punctuation); a modality where some class
# has no such caption is left out of decision distillation (its vocabulary and image-only rows).
NO_NAMES_VOCAB = ":caption-vocab-no-names"
VOCAB_SUFFIXES = (NO_NAMES_VOCAB, CAPTION_VOCAB)  # longest first
# Gating (an expert teaches a modality only where it beats the stage-1 student) is the demo's own
# step, not a distill setting; everything else a variant needs follows from its overrides.
# `self-label` labels the images of the modalities the gate kept (the same images as the gated variants).
GATED = ("decision-gated", "decision-gated+projection-modality", "self-label", SELF_DISTILL)

# The frozen-selection protocol of docs/DISTILLATION.md: every stage-2 choice is made on the validation
# splits with SELECTION_SEEDS and frozen in the selection file (`mmkd.demo.protocol`); the test run takes
# it and runs once, on the test splits, with TEST_STUDENT_SEEDS (disjoint from the selection seeds) on
# each of TEST_CORPUS_SEEDS: a fresh draw of both corpora and of who sees what, and freshly trained
# teachers. Its synthetic test sets come from TEST_DATA_SEED, which no earlier run generated: every run
# before this protocol used data seed 0 (USED_DATA_SEEDS; docs/DISTILLATION.md, "History").
SELECTION_SEEDS = (0, 1, 2)
TEST_STUDENT_SEEDS = (10, 11, 12)
TEST_CORPUS_SEEDS = (20, 21, 22)
USED_DATA_SEEDS = (0,)
TEST_DATA_SEED = 1009
# The demo trains on 32-px images without augmentation: the recipe its measurements were made with
# (docs/DISTILLATION.md). Real runs keep the authors' RandomResizedCrop (`data.augment`).
TRAIN_AUGMENT = "none"
SELECTION_CANDIDATES = ("projection", "paper-exact", "decision-gated", "decision-gated+projection-modality")
DEFAULT_VARIANT = "decision-gated+projection-modality"  # the default of a run without --stage2


def vocab_suffix(variant: str) -> str:
    """The variant's vocabulary suffix (`:caption-vocab`, `:caption-vocab-no-names`), or ""."""
    return next((s for s in VOCAB_SUFFIXES if variant.endswith(s)), "")


def base_variant(variant: str) -> str:
    """The STAGE2_VARIANTS entry of a variant name (without its vocabulary suffix)."""
    return variant[: len(variant) - len(vocab_suffix(variant))]


def uses_caption_vocab(variant: str) -> bool:
    return bool(vocab_suffix(variant))


def needs_image_only(variant: str) -> bool:
    """Decision distillation: image-only samples, their vocabulary and the modality routes."""
    return STAGE2_VARIANTS[base_variant(variant)].get("distill.lambda_decision", 0.0) > 0


def needs_alignment(variant: str) -> bool:
    return STAGE2_VARIANTS[base_variant(variant)].get("distill.target_space") == "projection"


def needs_routes(variant: str) -> bool:
    return STAGE2_VARIANTS[base_variant(variant)].get("distill.policy") == "modality"


def is_gated(variant: str) -> bool:
    return base_variant(variant) in GATED


@dataclass(frozen=True)
class DemoRecipe:
    quick: bool = False
    seed: int = 0
    # data
    synth_train_per_class: int = 200
    synth_difficulty: float = 0.5  # pinned: the measurements in docs/DISTILLATION.md were made at 0.5
    real_train_per_class: int = 500
    student_fraction: float = 0.2
    # teachers
    teachers: tuple[TeacherPlan, ...] = ()
    teacher_batch_size: int = 64
    # student
    student_model: str = "mmkd-tiny-vit"
    batch_size: int = 64
    stage1_epochs: int = 15
    stage1_lr: float = 1e-3
    stage2_steps: int = 300
    stage2_lr: float = 5e-4
    stage2_variants: tuple[str, ...] = (DEFAULT_VARIANT,)
    student_seeds: tuple[int, ...] = ()  # stage 1 / control / stage 2 once per seed (empty: `seed` only)
    decision_temperature: float = 0.05
    caption_vocab_per_class: int = 8  # `:caption-vocab`: training captions describing each class
    eval_split: str = "test"  # "val": the selection phase; "test": the reported comparison
    test_data_seed: int | None = None  # the synthetic test sets' own seed (None: the corpus seed's)
    # evaluation
    num_bootstrap: int = 200
    probe_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    eval_only: tuple[str, ...] = ()  # catalog datasets to evaluate (empty: all)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def teacher(self, name: str) -> TeacherPlan:
        return next(t for t in self.teachers if t.name == name)

    def routes(self) -> dict[str, list[str]]:
        """modality -> the expert teachers trained on it (decision targets come from them only)."""
        out: dict[str, list[str]] = {}
        for t in self.teachers:
            for m in t.modalities:
                out.setdefault(m, []).append(t.name)
        return out


def default_teachers(quick: bool) -> tuple[TeacherPlan, ...]:
    epochs = 3 if quick else 8
    return (
        TeacherPlan("radiology", ("chest-xray", "breast-ultrasound", "ct"), epochs=epochs),
        TeacherPlan("pathology", ("blood-cells", "histopathology"), epochs=epochs),
        TeacherPlan("eye-brain", ("fundus", "mri"), kind="hf", model="hf-clip-demo", epochs=epochs),
        TeacherPlan("dermatology", ("dermoscopy",), epochs=epochs + (1 if quick else 4)),
        TeacherPlan("generalist-weak", (), model="mmkd-tiny-vit", epochs=epochs, fraction=0.1),
    )


def make_recipe(quick: bool = False, seed: int = 0, variants: tuple[str, ...] | None = None,
                student_seeds: tuple[int, ...] = (), eval_split: str = "test",
                test_data_seed: int | None = None) -> DemoRecipe:
    """The demo's recipe; `quick` is a small version that runs end to end in a couple of minutes."""
    from mmkd.errors import UsageError

    if eval_split not in ("val", "test"):
        raise UsageError(f"--eval-split: {eval_split!r} is not allowed; use val (choosing a variant) or test (the "
                         f"reported comparison)")
    base = DemoRecipe(quick=quick, seed=seed, teachers=default_teachers(quick), student_seeds=tuple(student_seeds),
                      eval_split=eval_split, test_data_seed=test_data_seed)
    if quick:
        # One dataset per task type and two real ones: every step and task runs, on little data.
        base = dataclasses.replace(base, synth_train_per_class=16, real_train_per_class=16, student_fraction=0.3,
                                   stage1_epochs=4, stage2_steps=8, batch_size=32, teacher_batch_size=32,
                                   num_bootstrap=20, eval_only=("synth-ct", "synth-ct-retrieval", "synth-vqa",
                                                                "synth-slides", "real-pbc", "real-pneumoniamnist"))
    if variants:
        unknown = [v for v in variants if base_variant(v) not in STAGE2_VARIANTS or base_variant(v) == "control"
                   or (uses_caption_vocab(v) and not needs_image_only(v))]
        if unknown:
            raise UsageError(f"--stage2: {unknown} not allowed; choose from "
                             f"{', '.join(v for v in STAGE2_VARIANTS if v != 'control')}, or a decision variant "
                             f"with {CAPTION_VOCAB} or {NO_NAMES_VOCAB} (e.g. {DEFAULT_VARIANT}{CAPTION_VOCAB})")
        base = dataclasses.replace(base, stage2_variants=tuple(dict.fromkeys(variants)))
    return base
