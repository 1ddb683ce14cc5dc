"""One procedural image at a time: the modalities, their findings, and what was planted.

`render_sample(modality, finding, size, key)` draws one image deterministically from an integer
key (the same key gives the same pixels on every machine) and returns it with a `Planted`
record: the ground truth behind its caption, its VQA answers and the tests. Three random
streams are derived from the key — anatomy, lesion and acquisition noise — so the same key
with `draw_lesion=False` gives the identical image without the lesion, which is how tests
check that an answer ("the left lung") matches where the pixels actually changed.

Sides follow the radiological convention for CT and MRI: the patient's right is on the
image's left. Histopathology and dermoscopy have no sides.
"""

from __future__ import annotations

import numpy as np

from mmkd.synth import pathology, radiology
from mmkd.synth.findings import MODALITIES, Planted, Renderer

RENDERERS: dict[str, Renderer] = {
    "ct": radiology.render_ct,
    "mri": radiology.render_mri,
    "histopathology": pathology.render_histopathology,
    "dermoscopy": pathology.render_dermoscopy,
}


def streams(key: tuple[int, ...]) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent anatomy, lesion and noise generators of one sample key."""
    return tuple(np.random.default_rng([*map(int, key), stream]) for stream in (1, 2, 3))  # type: ignore[return-value]


def lesion_strength_and_noise(difficulty: float) -> tuple[float, float]:
    """How `difficulty` (0 easy .. 1 hard) fades lesions and adds noise: (lesion opacity, noise factor)."""
    return 1.0 - 0.5 * difficulty, 1.0 + 2.0 * difficulty


def render_sample(modality: str, finding: str, size: int, key: tuple[int, ...],
                  draw_lesion: bool = True, difficulty: float = 0.0) -> tuple[np.ndarray, Planted]:
    """Image uint8 [size, size, 3] and its Planted record; deterministic in (modality, finding, size, key, difficulty).

    `difficulty` in [0, 1] makes findings fainter (opacity 1 -> 0.5) and the image noisier
    (noise x1 -> x3) without changing what is planted where.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known: {list(MODALITIES)}")
    if finding not in MODALITIES[modality]:
        raise ValueError(f"unknown finding {finding!r} for {modality}; known: {MODALITIES[modality]}")
    rng_anatomy, rng_lesion, rng_noise = streams(key)
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty {difficulty} is outside [0, 1]")
    strength, noise_scale = lesion_strength_and_noise(difficulty)
    image, planted = RENDERERS[modality](size, finding, rng_anatomy, rng_lesion, rng_noise,
                                            strength if draw_lesion else 0.0, noise_scale)
    if not draw_lesion:
        planted = Planted(modality, "normal", mask_SS=np.zeros((size, size), bool))
    return image, planted
