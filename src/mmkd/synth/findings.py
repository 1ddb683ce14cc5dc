"""The synthetic modalities, their findings, and the record of what was drawn into one image.

Shared by the renderers (`radiology`, `pathology`), the caption and question writers (`text`,
`vqa`) and the corpus writer, so that none of them imports another's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# modality -> findings; the first is always the normal class. Order fixes class indices.
MODALITIES: dict[str, tuple[str, ...]] = {
    "ct": ("normal", "nodule", "mass", "effusion"),
    "mri": ("normal", "tumour", "ms_lesions", "infarct"),
    "histopathology": ("normal", "carcinoma", "inflammation", "necrosis"),
    "dermoscopy": ("normal", "nevus", "melanoma", "bcc"),
}


@dataclass
class Planted:
    """What was drawn into one image.

    label: finding key (e.g. "nodule"); "normal" when no lesion was drawn.
    count: number of lesions (0 for normal). size_mm: largest lesion diameter in mm (for
    effusions the fluid depth, for diffuse tissue patterns the width of the affected region).
    size_word: "small" | "medium" | "large" ("" for normal). side: patient side "left" |
    "right" | "both" ("" where sides do not apply). region: "upper" | "lower" (CT lung zone),
    "frontal" | "occipital" | "periventricular" (MRI), "" otherwise.
    extent: share of the image covered by the lesion, in [0, 1].
    mask_SS: bool [S, S], the lesion pixels.
    """

    modality: str
    label: str
    count: int = 0
    size_mm: float = 0.0
    size_word: str = ""
    side: str = ""
    region: str = ""
    extent: float = 0.0
    mask_SS: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"modality": self.modality, "label": self.label, "count": self.count,
                "size_mm": round(float(self.size_mm), 1), "size_word": self.size_word, "side": self.side,
                "region": self.region, "extent": round(float(self.extent), 3)}


# A renderer draws one modality: (size, finding, rng_anatomy, rng_lesion, rng_noise, lesion_strength,
# noise_scale) -> (uint8 [S, S, 3], Planted). lesion_strength in [0, 1] scales the lesion's opacity
# (0 draws none); noise_scale multiplies the acquisition noise.
Renderer = Callable[..., tuple[np.ndarray, Planted]]
