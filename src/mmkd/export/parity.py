"""Does an exported folder, loaded by open_clip's own functions, compute what mmkd computes?

Legend: B batch, D embedding dim.

Both sides run in fp32 on CPU on the same inputs: a seeded pixel batch [B, 3, H, W], a
synthetic PIL image through each side's preprocessing, and a few texts through each side's
tokenizer. Embeddings are compared after L2 normalisation (what `ClipEncoder` returns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_TOLERANCE = 1e-5
PROBE_TEXTS = ("a chest x-ray showing pneumonia", "an h&e stained slide of tumour tissue",
               "fundus photograph", "normal")


def probe_image(size: int = 64):
    """A deterministic RGB PIL image with structure in every channel (not a flat colour)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:size, :size]
    arr = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=-1).astype("uint8")
    return Image.fromarray(arr)


def load_open_clip_folder(folder: str | Path):
    """(model, preprocess, tokenizer) exactly as a user would get them from open_clip.

    One exception: a folder exported with a hub id as `hf_model_name` would need the network for
    the text model's config, so its text tower is built from the config.json inside the folder
    (the same file the hub id is declared to match).
    """
    import json

    import open_clip

    folder = Path(folder)
    name = f"local-dir:{folder}"
    overrides = {}
    text_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"].get("text_cfg", {})
    hf_name = text_cfg.get("hf_model_name")
    if hf_name and not Path(hf_name).is_dir() and (folder / "config.json").is_file():
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": str(folder), "hf_model_pretrained": False}
    model, _, preprocess = open_clip.create_model_and_transforms(name, **overrides)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@torch.no_grad()
def check_parity(reference, folder: str | Path, tolerance: float = DEFAULT_TOLERANCE,
                 num_images: int = 2, seed: int = 0) -> dict[str, Any]:
    """Compare `reference` (an mmkd ClipEncoder of the source checkpoint) with open_clip's load of `folder`.

    Returns max-abs-diff numbers and `passed` (all diffs <= tolerance and identical tokens).
    """
    model, preprocess, tokenizer = load_open_clip_folder(folder)
    image = probe_image()
    pixels_ref = reference.preprocess(image)
    pixels_exp = preprocess(image)
    size = tuple(pixels_ref.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    pixels_B3HW = torch.cat([pixels_ref[None], torch.randn(num_images, 3, *size, generator=generator)])
    image_ref_BD = reference.encode_image(pixels_B3HW).cpu()
    image_exp_BD = F.normalize(model.encode_image(pixels_B3HW).float(), dim=-1)
    texts = list(PROBE_TEXTS)
    tokens_ref = reference.tokenizer(texts)
    tokens_exp = tokenizer(texts)
    text_ref_BD = reference.encode_text(texts).cpu()
    text_exp_BD = F.normalize(model.encode_text(tokens_exp).float(), dim=-1)
    result = {
        "tolerance": tolerance,
        "preprocess_max_abs_diff": _max_diff(pixels_ref, pixels_exp),
        "image_max_abs_diff": _max_diff(image_ref_BD, image_exp_BD),
        "text_max_abs_diff": _max_diff(text_ref_BD, text_exp_BD),
        "tokens_equal": tokens_ref.shape == tokens_exp.shape and bool(torch.equal(tokens_ref, tokens_exp)),
    }
    diffs = [result[k] for k in ("preprocess_max_abs_diff", "image_max_abs_diff", "text_max_abs_diff")]
    result["passed"] = result["tokens_equal"] and all(d <= tolerance for d in diffs)
    return result


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max())
