"""Test data made on the fly: tiny image-text pair sets whose captions describe the image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "disc")


def draw(color: str, shape: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    img = (rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    r = size // 5
    mask = (abs(xx - cx) < r) & (abs(yy - cy) < r) if shape == "square" else (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[mask] = COLORS[color]
    return img


def make_pairs(root: Path, n: int = 64, seed: int = 0, size: int = 32, fmt: str = "csv",
               name: str = "pairs") -> Path:
    """Write n pairs (PNG files + a CSV/JSONL table) under root; returns the table path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        color, shape = list(COLORS)[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]
        Image.fromarray(draw(color, shape, rng, size)).save(root / "img" / f"{i:05d}.png")
        rows.append({"image": f"img/{i:05d}.png", "caption": f"a {color} {shape}", "sample_id": f"s{i:05d}",
                     "modality": "toy"})
    path = root / f"{name}.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
