"""Words for the synthetic corpus: captions, zero-shot class names and prompts, VQA questions.

Captions are composed from a sentence frame, a modality phrase, a finding phrase (with the
planted count, size and millimetres) and a location phrase (the planted side and region),
each drawn from synonyms with the sample's own random generator — so the same sample always
gets the same caption, and different samples of one class read differently. Everything a
caption says about a finding is true of the pixels (`Planted`). Captions stay short (at most
about 25 tokens) because the tiny students have a 32-token text context.

Zero-shot class names and prompt templates are deliberately *not* the training frames:
evaluation prompts should not be verbatim training captions.
"""

from __future__ import annotations

import numpy as np

from mmkd.synth.findings import MODALITIES, Planted

MODALITY_PHRASES: dict[str, list[str]] = {
    "ct": ["chest CT", "axial chest CT", "CT of the chest", "thoracic CT slice", "CT scan of the thorax",
           "non-contrast chest CT"],
    "mri": ["brain MRI", "axial FLAIR MRI of the brain", "MR image of the head", "cranial MRI", "brain MR slice",
            "axial brain MRI"],
    "histopathology": ["H&E-stained section", "histopathology patch", "H&E slide", "haematoxylin and eosin section",
                       "microscopy of H&E tissue", "histology image"],
    "dermoscopy": ["dermoscopy image", "dermatoscopic view", "dermoscopic photograph", "dermoscopy of the skin",
                   "skin dermoscopy", "dermatoscope image"],
}

# Zero-shot class names (also the `label` column of every synthetic CSV), in MODALITIES order.
CLASSNAMES: dict[str, dict[str, str]] = {
    "ct": {"normal": "normal lungs", "nodule": "pulmonary nodules", "mass": "lung mass",
           "effusion": "pleural effusion"},
    "mri": {"normal": "normal brain", "tumour": "brain tumour", "ms_lesions": "multiple sclerosis lesions",
            "infarct": "ischaemic infarct"},
    "histopathology": {"normal": "normal glandular tissue", "carcinoma": "carcinoma", "inflammation": "inflammation",
                       "necrosis": "necrosis"},
    "dermoscopy": {"normal": "normal skin", "nevus": "benign nevus", "melanoma": "melanoma",
                   "bcc": "basal cell carcinoma"},
}

ZERO_SHOT_TEMPLATES: dict[str, list[str]] = {
    "ct": ["a chest CT scan showing {}.", "axial CT of the thorax with {}.", "a CT image of {}.",
           "computed tomography of the chest: {}."],
    "mri": ["a brain MRI showing {}.", "an axial MR image with {}.", "a FLAIR MRI of {}.",
            "magnetic resonance imaging of the head: {}."],
    "histopathology": ["an H&E image of {}.", "a histopathology patch showing {}.", "a tissue section with {}.",
                       "microscopy of {}."],
    "dermoscopy": ["a dermoscopy image of {}.", "a dermatoscopic photo showing {}.", "skin dermoscopy: {}.",
                   "a close-up of {} under dermoscopy."],
}

# Finding phrases. Slots: {a} count word ("a", "two", ...), {s} plural ending, {size} size word,
# {mm} diameter in mm, {ies} "y"/"ies".
FINDING_PHRASES: dict[str, dict[str, list[str]]] = {
    "ct": {
        "normal": ["normal lungs", "clear lungs", "no focal lung lesion", "unremarkable lung parenchyma",
                   "normal lung fields"],
        "nodule": ["{a} {size} pulmonary nodule{s}", "{a} {size} lung nodule{s}", "{a} nodule{s} up to {mm} mm",
                   "{a} {size} nodular opacit{ies}"],
        "mass": ["a {size} lung mass", "a {mm} mm spiculated mass", "a {size} lobulated pulmonary mass",
                 "a {size} irregular lung mass"],
        "effusion": ["a {size} pleural effusion", "{size} pleural fluid", "a {size} effusion with a fluid level",
                     "a pleural effusion {mm} mm deep"],
    },
    "mri": {
        "normal": ["a normal brain", "no intracranial abnormality", "normal brain parenchyma", "an unremarkable brain"],
        "tumour": ["a {size} ring-enhancing tumour", "a {size} brain tumour with necrotic core",
                   "a {mm} mm tumour with oedema", "a {size} glioma"],
        "ms_lesions": ["{a} multiple sclerosis lesions", "{a} demyelinating plaques", "{a} periventricular lesions",
                       "{a} small bright white matter lesions"],
        "infarct": ["a {size} ischaemic infarct", "a wedge-shaped infarct", "a {size} cortical stroke",
                    "an acute {size} infarct"],
    },
    "histopathology": {
        "normal": ["normal glandular tissue", "benign glands in normal stroma", "normal tissue with regular glands",
                   "no malignancy"],
        "carcinoma": ["{size} carcinoma with crowded atypical nuclei", "{size} invasive carcinoma",
                      "sheets of pleomorphic carcinoma cells", "{size} adenocarcinoma"],
        "inflammation": ["{size} chronic inflammation", "a dense lymphocytic infiltrate", "{size} inflammatory infiltrate",
                         "inflamed stroma with many lymphocytes"],
        "necrosis": ["{size} necrosis", "necrotic debris", "{size} coagulative necrosis", "necrotic tissue with nuclear dust"],
    },
    "dermoscopy": {
        "normal": ["normal skin", "healthy skin without a lesion", "unremarkable skin", "no pigmented lesion"],
        "nevus": ["a {size} benign nevus", "a symmetric brown mole", "a {size} regular melanocytic nevus",
                  "a benign nevus of {mm} mm"],
        "melanoma": ["a {size} melanoma", "an asymmetric melanoma with blue-white veil", "a {mm} mm irregular melanoma",
                     "melanoma with atypical black dots"],
        "bcc": ["a {size} basal cell carcinoma", "a pearly nodule with branching vessels", "basal cell carcinoma of {mm} mm",
                "a pink {size} basal cell carcinoma"],
    },
}

_SIZE_WORDS = {
    "ct": {"small": ["small"], "medium": ["medium-sized", "moderate"], "large": ["large"]},
    "mri": {"small": ["small"], "medium": ["medium-sized", "moderate"], "large": ["large"]},
    "histopathology": {"small": ["focal"], "medium": ["patchy", "moderate"], "large": ["extensive", "diffuse"]},
    "dermoscopy": {"small": ["small"], "medium": ["medium-sized"], "large": ["large"]},
}
_COUNT_WORDS = {1: ["a", "a single", "one", "a solitary"], 2: ["two"], 3: ["three"], 4: ["four"], 5: ["five"],
                6: ["six"]}

# Location phrases per modality; {side} patient side, {region} planted region.
_LOCATION_PHRASES = {
    "ct": [" in the {side} {region} lobe", " in the {side} lung", " in the {region} {side} lung", ", {side} {region} zone"],
    "mri": [" in the {side} {region} lobe", " of the {side} hemisphere", ", {side} {region}", " in the {side} {region} region"],
}
_LOCATION_SPECIAL = {
    ("ct", "effusion"): [" on the {side}", " in the {side} pleural space", " at the {side} lung base"],
    ("mri", "ms_lesions"): [" around both lateral ventricles", ", periventricular and bilateral",
                            " in both hemispheres"],
}

_FRAMES = ["{M} showing {F}{L}.", "{F}{L} on {M}.", "{M}: {F}{L}.", "{M} demonstrates {F}{L}.", "{M} with {F}{L}."]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def classnames(modality: str) -> list[str]:
    """Class names of a modality in class-index order (the `label` values of its CSVs)."""
    return [CLASSNAMES[modality][f] for f in MODALITIES[modality]]


def finding_phrase(planted: Planted, rng: np.random.Generator) -> str:
    m = planted.modality
    phrase = _pick(rng, FINDING_PHRASES[m][planted.label])
    size = _pick(rng, _SIZE_WORDS[m].get(planted.size_word, [""]))
    count = planted.count
    phrase = phrase.format(a=_pick(rng, _COUNT_WORDS.get(count, [str(count)])), s="s" if count > 1 else "",
                           ies="ies" if count > 1 else "y", size=size, mm=int(round(planted.size_mm)))
    return " ".join(phrase.split())  # an empty size word leaves a double space


def location_phrase(planted: Planted, rng: np.random.Generator) -> str:
    """Where the lesion is, or "" (normal images, modalities without sides, and sometimes by chance)."""
    options = _LOCATION_SPECIAL.get((planted.modality, planted.label)) or _LOCATION_PHRASES.get(planted.modality)
    if planted.label == "normal" or not options or rng.random() < 0.15:
        return ""
    return _pick(rng, options).format(side=planted.side, region=planted.region)


def caption(planted: Planted, rng: np.random.Generator) -> str:
    """One caption of a planted image, e.g. 'Axial chest CT showing two small lung nodules in the left lung.'"""
    text = _pick(rng, _FRAMES).format(M=_pick(rng, MODALITY_PHRASES[planted.modality]),
                                      F=finding_phrase(planted, rng), L=location_phrase(planted, rng))
    return text[0].upper() + text[1:]


def distinct_captions(planted: Planted, rng: np.random.Generator, num: int, max_tries: int = 50) -> list[str]:
    """`num` different captions of one image (retrieval sets: several correct texts per image)."""
    out: list[str] = []
    for _ in range(max_tries):
        text = caption(planted, rng)
        if text not in out:
            out.append(text)
        if len(out) == num:
            break
    return out
