"""VQA questions about what was planted in a synthetic image: presence, location, count, kind.

Every answer is read off the image's `Planted` record, so it is true of the pixels. Question
types (`question_type` in each row):
  presence     closed  "Is there evidence of a lung mass?"        yes | no (balanced)
  normal       closed  "Is this image normal?"                     yes | no
  abnormality  open    "What is the main finding?"                 nodule, mass, ..., none
  side         open    "Which side is the abnormality on?"         left | right | both   (CT, MRI)
  side_check   closed  "Is the abnormality on the left side?"      yes | no              (CT, MRI)
  region       open    "In which lung zone is the abnormality?"    upper | lower | frontal | occipital
  count        open    "How many nodules are there?"               1 ... 6               (CT nodules, MS lesions)
  modality     open    "What imaging modality is this?"            ct | mri | histopathology | dermoscopy
"""

from __future__ import annotations

import numpy as np

from mmkd.synth.findings import MODALITIES, Planted

# What a question calls a finding, and the short open answer naming it.
_TERMS = {
    "nodule": ("a lung nodule", "nodule"), "mass": ("a lung mass", "mass"), "effusion": ("a pleural effusion", "effusion"),
    "tumour": ("a brain tumour", "tumour"), "ms_lesions": ("multiple sclerosis lesions", "ms lesions"),
    "infarct": ("an infarct", "infarct"), "carcinoma": ("carcinoma", "carcinoma"),
    "inflammation": ("inflammation", "inflammation"), "necrosis": ("necrosis", "necrosis"),
    "nevus": ("a nevus", "nevus"), "melanoma": ("melanoma", "melanoma"), "bcc": ("a basal cell carcinoma", "basal cell carcinoma"),
}
NO_FINDING = "none"
_REGION_QUESTION = {"ct": "In which lung zone is the abnormality?", "mri": "In which lobe is the abnormality?"}
_COUNT_QUESTION = {"nodule": "How many nodules are there?", "ms_lesions": "How many lesions are visible?"}


def answer_name(label: str) -> str:
    """The open-ended answer naming a finding ("none" for normal)."""
    return NO_FINDING if label == "normal" else _TERMS[label][1]


def _row(kind: str, question: str, answer: str) -> dict:
    return {"question_type": kind, "question": question, "answer": answer,
            "answer_type": "closed" if answer in ("yes", "no") else "open"}


def questions(planted: Planted, rng: np.random.Generator) -> list[dict]:
    """Three or four questions about one image, each with its true answer (dicts: question_type,
    question, answer, answer_type)."""
    m, label = planted.modality, planted.label
    abnormal = [f for f in MODALITIES[m] if f != "normal"]
    out = []
    if label != "normal" and rng.random() < 0.5:
        asked, answer = label, "yes"
    else:
        others = [f for f in abnormal if f != label]
        asked, answer = others[int(rng.integers(len(others)))], "no"
    frame = ["Is there evidence of {}?", "Does this image show {}?", "Is {} present?"][int(rng.integers(3))]
    out.append(_row("presence", frame.format(_TERMS[asked][0]), answer))
    out.append(_row("abnormality", ["What is the main finding?", "What abnormality is seen?"][int(rng.integers(2))],
                    answer_name(label)))
    if planted.side in ("left", "right"):
        if rng.random() < 0.5:
            out.append(_row("side", "Which side is the abnormality on?", planted.side))
        else:
            probe = ["left", "right"][int(rng.integers(2))]
            out.append(_row("side_check", f"Is the abnormality on the {probe} side?", "yes" if probe == planted.side else "no"))
        if planted.region and rng.random() < 0.6:
            out.append(_row("region", _REGION_QUESTION[m], planted.region))
    elif planted.side == "both":
        out.append(_row("side", "Which side is the abnormality on?", "both"))
    if label in _COUNT_QUESTION:
        out.append(_row("count", _COUNT_QUESTION[label], str(planted.count)))
    if len(out) < 3:
        if rng.random() < 0.5:
            out.append(_row("normal", ["Is this image normal?", "Is this a normal study?"][int(rng.integers(2))],
                            "yes" if label == "normal" else "no"))
        else:
            out.append(_row("modality", "What imaging modality is this?", m))
    return out
