"""Tiny, randomly initialised teachers and image-text data for tests, benches and demos.

Every teacher is saved through its library's own format and loaded back by the real loaders:
`make_open_clip_teacher` writes an open_clip folder (open_clip_config.json + safetensors),
`make_hf_clip_teacher` a transformers CLIPModel/SiglipModel folder (save_pretrained) with a
byte-level CLIP tokenizer built from scratch (no download).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np


def make_open_clip_teacher(folder: str | Path, seed: int = 0, embed_dim: int = 48, image_size: int = 32,
                           width: int = 32, mean: tuple = (0.48145466, 0.4578275, 0.40821073),
                           std: tuple = (0.26862954, 0.26130258, 0.27577711), context_length: int = 32,
                           weights_name: str = "open_clip_model.safetensors") -> Path:
    """An open_clip CLIP (ViT image tower, transformer text tower) saved as a `local-dir:` folder.

    `weights_name="open_clip_pytorch_model.bin"` writes the weights as the Hub repos of open_clip models
    publish them (a plain state dict saved by torch.save)."""
    import torch

    from mmkd.models.student import build_open_clip_model
    from mmkd.utils.io import atomic_save_safetensors, atomic_write_json

    folder = Path(folder)
    model_cfg = {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }
    preprocess_cfg = {"size": image_size, "mean": list(mean), "std": list(std), "interpolation": "bicubic",
                      "resize_mode": "shortest"}
    torch.manual_seed(seed)
    model = build_open_clip_model(model_cfg)
    atomic_write_json(folder / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    if weights_name.endswith(".safetensors"):
        atomic_save_safetensors(folder / weights_name, dict(model.state_dict()))
    else:
        torch.save(dict(model.state_dict()), folder / weights_name)
    return folder


def write_hub_cache(cache: str | Path, repo_id: str, files: str | Path, revision: str = "0" * 40) -> Path:
    """Put the files of folder `files` into a Hugging Face cache (`HF_HUB_CACHE` layout) as `repo_id`.

    Libraries then find the repo offline by its id (`AutoConfig.from_pretrained(repo_id)`, an
    open_clip config naming it as `hf_model_name`), exactly as after `huggingface-cli download`.
    Returns the snapshot folder.
    """
    import shutil

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(files).iterdir():
        if f.is_file():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def _byte_level_clip_tokenizer(folder: Path):
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")), len(vocab)


def make_hf_clip_teacher(folder: str | Path, seed: int = 0, kind: str = "clip", projection_dim: int = 40,
                         image_size: int = 32, context_length: int = 24) -> Path:
    """A transformers CLIPModel (kind="clip") or SiglipModel (kind="siglip") saved with save_pretrained,
    with its image processor and tokenizer."""
    import torch
    import transformers

    folder = Path(folder)
    tokenizer, vocab_size = _byte_level_clip_tokenizer(folder / "_tokenizer_src")
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(seed)
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=context_length,
                             bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
            vision_config=dict(tower, image_size=image_size, patch_size=8), projection_dim=projection_dim)
        model = transformers.CLIPModel(config)
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                                    crop_size={"height": image_size, "width": image_size})
    elif kind == "siglip":
        config = transformers.SiglipConfig(
            text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=context_length),
            vision_config=dict(tower, image_size=image_size, patch_size=8))
        model = transformers.SiglipModel(config)
        processor = transformers.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"kind must be clip or siglip, not {kind!r}")
    model.eval().save_pretrained(str(folder))
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def make_pairs_csv(folder: str | Path, num_samples: int = 24, seed: int = 0, image_size: int = 40,
                   broken: tuple[int, ...] = ()) -> Path:
    """`pairs.csv` with PNG images and captions; rows listed in `broken` get an unreadable image."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ["chest", "x-ray", "fundus", "retina", "blood", "cell", "nodule", "lesion", "normal", "ultrasound",
             "breast", "tissue", "stain", "opacity", "vessel", "mass"]
    rows: list[dict[str, Any]] = []
    for i in range(num_samples):
        name = f"images/{i:05d}.png"
        if i in broken:
            (folder / name).write_bytes(b"not an image")
        else:
            pixels = rng.integers(0, 256, size=(image_size, image_size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name)
        caption = " ".join(rng.choice(words, size=5)) + f" case {i}"
        rows.append({"sample_id": f"s{i:05d}", "image": name, "caption": caption})
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sample_id", "image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"
