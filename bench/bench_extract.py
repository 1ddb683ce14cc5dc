"""Extraction's image work: one decode and one resize for every teacher, against per-teacher work.

1. Three tiny open_clip teachers (sizes 32, 24, 40 px, different normalisations) encode the same
   JPEG pairs twice: once as `mmkd extract` does (decode once, resize once to 40 px, every teacher's
   preprocessing from that copy), once decoding the image again for every teacher and running its
   own preprocessing on the original. The 40-px teacher's stores must be identical, the others'
   within cosine 0.99. Prints `RATIO extract_shared_decode`.
2. The CPU a sample's images cost a data worker (decode + every teacher's preprocessing, no model)
   with the paper's nine teachers (224 px; OpenAI, 0.5 and ImageNet normalisations, bicubic and
   bilinear) against one teacher, on BIOMEDICA-size JPEGs (1600 x 1200, quality 90), measured in
   the same run. Prints `RATIO extract_cpu_nine_vs_one_teacher` (target <= 2) and, as a figure,
   the same ratio when every teacher's preprocessing runs on the full-resolution image.

Usage: python bench/bench_extract.py [--samples 96] [--image-size 640] [--large-samples 16]
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
from mmkd.teachers.extract import ExtractOptions, TransformPlan, _RowsDataset, extract_features
from mmkd.teachers.testing import make_open_clip_teacher

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# the paper's nine teachers' image preprocessing: (size, normalisation, interpolation)
NINE = {"BMCA-CLIP": (224, OPENAI, "bicubic"), "BiomedCLIP": (224, OPENAI, "bicubic"),
        "UniMed-CLIP": (224, OPENAI, "bicubic"), "PMC-CLIP": (224, IMAGENET, "bicubic"),
        "QuiltNet": (224, OPENAI, "bicubic"), "GenMedCLIP": (224, OPENAI, "bicubic"),
        "PLIP": (224, OPENAI, "bicubic"), "PubMedCLIP": (224, OPENAI, "bicubic"), "MedCLIP": (224, HALF, "bilinear")}


def make_jpegs(folder: Path, num_samples: int, size: int, height: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(num_samples):
        # smooth gradients plus noise: compresses like a photo, decodes at a realistic cost
        yy, xx = np.mgrid[0:height or size, 0:size]
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
    parser.add_argument("--large-samples", type=int, default=16)
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
        assert np.array_equal(a.image_features("t2"), b.image_features("t2")), "the largest teacher's pixels changed"
        for t in teachers:
            x, y = (torch.from_numpy(np.asarray(s.image_features(t), np.float32)) for s in (a, b))
            cosine = float(torch.nn.functional.cosine_similarity(x, y, dim=-1).min())
            assert cosine >= 0.99, f"{t}: cosine {cosine:.4f} to its own preprocessing"
            print(f"{t}: lowest cosine to its own preprocessing of the original {cosine:.4f}")
        n = args.samples
        print(f"shared decode:      {times[True]:6.2f} s ({n / times[True]:6.1f} rows/s, {len(teachers)} teachers)")
        print(f"decode per teacher: {times[False]:6.2f} s ({n / times[False]:6.1f} rows/s)")
        print(f"RATIO extract_shared_decode: {times[False] / times[True]:.2f}x "
              f"(target > 1: per-teacher decode time / shared decode time)")
        nine_vs_one(root / "large", args.large_samples)


def _cpu_per_sample(datasets: dict[str, _RowsDataset], rounds: int = 3) -> dict[str, float]:
    """Process CPU seconds a sample's decode and preprocessing take in each dataset: the best of `rounds`
    passes, the datasets taking turns (so a busy moment of the machine does not favour one of them)."""
    best = {name: float("inf") for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            t0 = time.process_time()
            for i in range(len(dataset)):
                dataset[i]
            best[name] = min(best[name], (time.process_time() - t0) / len(dataset))
    return best


def nine_vs_one(folder: Path, num_samples: int) -> None:
    from open_clip.transform import image_transform

    records, _ = index_source(str(make_jpegs(folder, num_samples, 1600, 1200)))
    transforms = {name: image_transform(size, is_train=False, mean=norm[0], std=norm[1], interpolation=interp)
                  for name, (size, norm, interp) in NINE.items()}
    one = {"BMCA-CLIP": transforms["BMCA-CLIP"]}
    per_teacher = _RowsDataset(records, transforms, 64_000_000, True)
    per_teacher.plan = TransformPlan(key={n: n for n in transforms}, from_original=set(transforms))
    cpu = _cpu_per_sample({"one": _RowsDataset(records, one, 64_000_000, True),
                           "nine": _RowsDataset(records, transforms, 64_000_000, True),
                           "nine_full_resolution": per_teacher})
    size = sum(Path(r.image).stat().st_size for r in records) / len(records)
    print(f"{num_samples} JPEGs of 1600 x 1200 ({size / 1e6:.2f} MB each); CPU a sample, decode + preprocessing:")
    for what, seconds in cpu.items():
        print(f"  {what:<22} {seconds * 1e3:7.1f} ms")
    print(f"FIGURE extract_cpu_nine_vs_one_teacher_full_resolution: {cpu['nine_full_resolution'] / cpu['one']:.2f}x "
          f"(every teacher's preprocessing on the original image)")
    print(f"RATIO extract_cpu_nine_vs_one_teacher: {cpu['nine'] / cpu['one']:.2f}x (target <= 2: CPU a sample with "
          f"nine teachers / one teacher)")


if __name__ == "__main__":
    main()
