"""`mmkd.zero_shot(model, images, labels)`: class probabilities for images, in one call.

Legend: N images, C labels (classes), D embedding dim.

    probs_NC = mmkd.zero_shot("runs/demo", ["a.png", "b.png"], ["pneumonia", "normal"])

Each label's text embedding is the mean of its normalised prompt embeddings over the templates
(`mmkd.evaluation.prompts.class_embeddings`; default templates `DEFAULT_TEMPLATES`). Probabilities
are softmax(scale * image_ND @ classes_CD.T) with the model's learned logit scale when it has one
(open_clip models), else 100 (CLIP's trained value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from mmkd.errors import UsageError

DEFAULT_LOGIT_SCALE = 100.0
MAX_IMAGE_PIXELS = 256_000_000


def load_image(image: Any, where: str = "images"):
    """A PIL RGB image from a PIL image or a path; a missing or unreadable file is a UsageError naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise UsageError(f"{where}: expected a PIL image or a file path, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise UsageError(f"{where}: file {str(path)!r} does not exist; check the path")
    from mmkd.data.pairs import decode_image

    try:
        return decode_image(str(path), MAX_IMAGE_PIXELS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{where}: {str(path)!r} is not a readable image ({type(e).__name__}: {e}); "
                         f"give a PNG, JPEG, TIFF or other file Pillow can open") from None
    except Exception as e:  # decompression-bomb guard and other decoder failures
        raise UsageError(f"{where}: {str(path)!r} could not be decoded ({type(e).__name__}); "
                         f"give a smaller or valid image") from None


def check_labels(labels: Sequence[str], where: str = "labels") -> list[str]:
    """Stripped, non-empty, unique labels; at least one."""
    if isinstance(labels, str):
        raise UsageError(f"{where}: give a list of labels, not one string (split {labels!r} first)")
    cleaned = [str(label).strip() for label in labels]
    if not [c for c in cleaned if c]:
        raise UsageError(f"{where}: the label list is empty; give at least one label, e.g. \"pneumonia;normal\"")
    if any(not c for c in cleaned):
        raise UsageError(f"{where}: an empty label in {list(labels)!r}; remove the stray separator")
    duplicates = sorted({c for c in cleaned if cleaned.count(c) > 1})
    if duplicates:
        raise UsageError(f"{where}: label(s) {duplicates} given more than once; list each label once")
    return cleaned


def logit_scale_of(model) -> float:
    """The model's learned temperature exp(logit_scale) when it exposes one, else 100."""
    for owner in (model, getattr(model, "model", None)):
        scale = getattr(owner, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return float(scale.detach().float().exp().reshape(-1)[0])
        if isinstance(scale, (int, float)):
            return float(scale)
    return DEFAULT_LOGIT_SCALE


def resolve_model(model, device: str = "cpu"):
    """A ClipEncoder: `model` itself, or `mmkd.load_model(model)` for a spec string/path."""
    if isinstance(model, (str, Path)):
        from mmkd.api import load_model

        return load_model(str(model), device=device)
    if not (hasattr(model, "encode_image") and hasattr(model, "encode_text") and hasattr(model, "preprocess")):
        raise UsageError(f"model: expected a ClipEncoder or a model spec string, got {type(model).__name__}")
    return model


@torch.no_grad()
def image_embeddings(model, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
    """[N, D] normalised embeddings of PIL images or paths, preprocessed by the model's own transform."""
    from tqdm.auto import tqdm

    feats = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="encode images", unit="batch", disable=None if len(starts) > 1 else True,
                      leave=False):
        chunk = images[start:start + batch_size]
        pixels = torch.stack([model.preprocess(load_image(img)) for img in chunk])
        feats.append(model.encode_image(pixels).float().cpu())
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def zero_shot(model, images, labels: Sequence[str], templates: Sequence[str] | None = None,
              batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Class probabilities [N, C] (float32, rows sum to 1) of `images` over `labels`.

    model: a ClipEncoder, or a spec for `mmkd.load_model` (checkpoint/run dir, export folder, teacher spec).
    images: PIL images or file paths (one image or path alone is accepted too).
    templates: prompt templates with a `{}` placeholder; None uses the default biomedical set.
    """
    from PIL import Image

    from mmkd.evaluation.prompts import class_embeddings

    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    images = list(images)
    if not images:
        raise UsageError("images: no images given; pass at least one PIL image or path")
    labels = check_labels(labels)
    model = resolve_model(model, device)
    classes_CD = class_embeddings(model, labels, list(templates) if templates else None)
    images_ND = image_embeddings(model, images, batch_size)
    logits_NC = logit_scale_of(model) * images_ND @ classes_CD.T
    return logits_NC.softmax(dim=-1)
