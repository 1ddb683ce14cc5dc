"""Extraction with one shared image decode against one decode per teacher.

Three tiny open_clip teachers (different sizes and normalisations) encode the same JPEG
pairs twice: once decoding each image a single time and giving every teacher its own
preprocessing of it (what `mmkd extract` does), once decoding it again for every teacher
(what running one extraction per teacher costs in decoding). Both stores must be identical.

Usage: python bench/bench_extract.py [--samples 96] [--image-size 640]
Prints `RATIO extract_shared_decode: <x> (target > 1: per-teacher decode time / shared)`.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmkd.data.feature_store import FeatureStore
from mmkd.data.pairs import index_source
from mmkd.teachers import load_teacher
from mmkd.teachers.extract import ExtractOptions, extract_features
from mmkd.teachers.testing import make_open_clip_teacher


def make_jpegs(folder: Path, num_samples: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(num_samples):
        # smooth gradients plus noise: compresses like a photo, decodes at a realistic cost
        yy, xx = np.mgrid[0:size, 0:size]
        base = np.stack([(xx + 3 * i) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.jpg", quality=90)
        rows.append({"image": f"img/{i}.jpg", "caption": f"figure {i} of a biomedical article"})
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=640)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records, _ = index_source(str(make_jpegs(root / "data", args.samples, args.image_size)))
        teachers = {}
        for i, (size, mean) in enumerate([(32, (0.48, 0.46, 0.41)), (24, (0.5, 0.5, 0.5)), (40, (0.4, 0.4, 0.4))]):
            folder = make_open_clip_teacher(root / f"t{i}", seed=i, image_size=size, mean=mean)
            teachers[f"t{i}"] = load_teacher(f"local-dir:{folder}")
        times = {}
        for shared in (True, False):
            opts = ExtractOptions(batch_size=32, chunk_rows=32, shared_decode=shared, progress=False)
            t0 = time.perf_counter()
            extract_features(records, teachers, str(root / f"store-{shared}"), opts)
            times[shared] = time.perf_counter() - t0
        a, b = FeatureStore(root / "store-True"), FeatureStore(root / "store-False")
        for t in teachers:
            assert np.array_equal(a.image_features(t), b.image_features(t)), "decode modes disagree"
        n = args.samples
        print(f"shared decode:      {times[True]:6.2f} s ({n / times[True]:6.1f} rows/s, {len(teachers)} teachers)")
        print(f"decode per teacher: {times[False]:6.2f} s ({n / times[False]:6.1f} rows/s)")
        print(f"RATIO extract_shared_decode: {times[False] / times[True]:.2f}x "
              f"(target > 1: per-teacher decode time / shared decode time)")


if __name__ == "__main__":
    main()
