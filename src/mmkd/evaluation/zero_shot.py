"""Zero-shot classification: image features against class prompt embeddings.

Legend: N images, C classes, D embedding dim.

Class embedding = mean of the normalised embeddings of the class's prompts, renormalised
(`prompts.class_embeddings`); a class's prompts are the templates filled with its name, or the
entry's per-class `prompts` sentences. Class probabilities = softmax(LOGIT_SCALE · cosine); AUROC
uses them, the prediction is their argmax. LOGIT_SCALE is CLIP's trained maximum (100), fixed so
that every model is scored the same way (CLIP_benchmark uses the same 100).

Multi-label data (evaluation.multilabel) is scored per label from the cosine similarities.
"""

from __future__ import annotations

import numpy as np
import torch

from mmkd.errors import UsageError
from mmkd.evaluation.prompts import (DEFAULT_TEMPLATES, class_embeddings, class_prompts, prompt_embeddings,
                                     prompts_for_classes)

LOGIT_SCALE = 100.0


def zero_shot_probs(image_feats_ND: torch.Tensor, class_feats_CD: torch.Tensor,
                    logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """[N, C] class probabilities from normalised image and class embeddings."""
    return (logit_scale * image_feats_ND.float() @ class_feats_CD.float().T).softmax(dim=-1)


def zero_shot(model, images, classnames: list[str], templates: list[str] | None = None,
              batch_size: int = 64) -> torch.Tensor:
    """[N, C] zero-shot class probabilities for PIL images (or a preprocessed [N, 3, H, W] tensor)."""
    from mmkd.evaluation.encode import encode_images

    class_feats_CD = class_embeddings(model, classnames, templates or DEFAULT_TEMPLATES, batch_size)
    if isinstance(images, torch.Tensor):
        feats_ND = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    else:
        class _Pil:
            def __init__(self, items):
                self.items = list(items)

            def __len__(self):
                return len(self.items)

            def load(self, i):
                return self.items[i].convert("RGB")

        feats_ND = encode_images(model, _Pil(images), batch_size)
    return zero_shot_probs(feats_ND, class_feats_CD)


PROTOCOLS = ("mmkd", "authors")


def run(model, entry, *, seed: int, cache, num_bootstrap: int, protocol: str = "mmkd") -> dict:
    """Zero-shot metrics on the entry's evaluation split (test by default).

    `protocol`: mmkd (this module's definitions) or authors (the MMKD-CLIP authors' logits, binary
    metrics and bootstrap, mmkd.evaluation.authors_protocol) for single-label sets; multi-label sets
    are scored the mmkd way under either, and their result says so.
    """
    from mmkd.evaluation.datasets import load_classification, pick_split
    from mmkd.evaluation.encode import texts_fingerprint
    from mmkd.evaluation.metrics import bootstrap_classification_ci, classification_metrics

    data = load_classification(entry)
    if not data.named:
        raise UsageError(f"datasets.{entry.name}.classnames: zero-shot needs class names (the labels are integers); "
                         f"list one name per label in the catalog")
    split = pick_split(list(data.splits), entry.split, entry.name)
    labeled = data.splits[split]
    if len(labeled) == 0:
        raise UsageError(f"dataset {entry.name}: split {split!r} has no images")
    templates: list[str] | None = None
    if entry.prompts:
        prompts = prompts_for_classes(entry.prompts, data.classnames, data.keys, f"datasets.{entry.name}.prompts")
    else:
        templates = list(entry.templates or DEFAULT_TEMPLATES)
        prompts = class_prompts(data.classnames, templates)
    image_feats_ND = cache.image_features(model, entry.name, split, labeled.images)
    class_feats_CD = cache.get_or_compute(
        (cache.model_key(model), entry.name, "zero-shot.classes"),
        lambda: {"features": prompt_embeddings(model, prompts, cache.batch_size)},
        fingerprint=texts_fingerprint([p for per_class in prompts for p in per_class]))["features"]
    common = {
        "prompts": {c: p for c, p in zip(data.classnames, prompts)},
        "split_sizes": {name: len(s) for name, s in data.splits.items()},
    }
    details = {"split": split, "classnames": data.classnames, "templates": templates,
               "prompt_source": "per-class sentences" if entry.prompts else "templates", "logit_scale": LOGIT_SCALE}
    if data.multilabel:
        from mmkd.evaluation.multilabel import evaluate_multilabel

        scores_NC = (LOGIT_SCALE * image_feats_ND.float() @ class_feats_CD.float().T).numpy()
        result = evaluate_multilabel(labeled.labels, scores_NC, data.classnames, num_bootstrap, seed)
        result["details"] = {**details, **result["details"]}
        return {**result, **common}
    y_true = labeled.labels
    from mmkd.evaluation.clip_benchmark import topk_accuracy

    if protocol == "authors":
        from mmkd.evaluation.authors_protocol import BOOTSTRAP_SEED, authors_classification, is_binary

        cosine_NC = (image_feats_ND.double() @ class_feats_CD.double().T).numpy()
        metrics, ci, probs_NC = authors_classification(y_true, cosine_NC, num_bootstrap)
        details.update(logit_scale=1.0, bootstrap_seed=BOOTSTRAP_SEED,
                       averaging="binary" if is_binary(y_true) else "macro")
    else:
        probs_NC = zero_shot_probs(image_feats_ND, class_feats_CD).numpy()
        metrics = classification_metrics(y_true, probs_NC)
        ci = bootstrap_classification_ci(y_true, probs_NC, num_bootstrap, seed)
    metrics_out: dict[str, float | None] = {**metrics, "top5_accuracy": topk_accuracy(y_true, probs_NC, 5)}
    from sklearn.metrics import confusion_matrix

    return {
        "metrics": metrics_out,
        "ci": ci,
        "protocol": protocol,
        **common,
        "details": {
            **details,
            "class_counts": np.bincount(y_true, minlength=len(data.classnames)).tolist(),
            "confusion_matrix": confusion_matrix(y_true, probs_NC.argmax(1),
                                                 labels=list(range(len(data.classnames)))).tolist(),
        },
    }
