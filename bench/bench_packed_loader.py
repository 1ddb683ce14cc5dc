"""Loader cost per training sample: BIOMEDICA-size originals vs the same samples packed by `mmkd data pack`.

Originals: `--originals` webdataset samples whose images are 1600 x 1200 JPEGs of about 1 MB
(quality 95, smooth structure plus sensor-like noise, as BIOMEDICA's full-resolution figures).
They are packed (`mmkd.data.pack.pack`, shorter side 256, JPEG quality 90) in this run. Each
loader reads every sample once with the training transform of a 224-px student
(RandomResizedCrop, scale 0.9-1, bicubic, normalise) in this process (no workers), and what it
costs is measured around the iteration only:
- CPU seconds per sample (`time.process_time`), originals vs packed, the fastest of `--passes` passes
  over each (a pass over the packed samples lasts a fraction of a second, so one interrupt or
  cache refill on a shared machine moves a single pass by tens of percent);
- bytes read per sample (`rchar` of /proc/self/io: every read and pread of the process);
- files opened per sample (Python audit hook "open": builtins.open and os.open), on a larger set
  of small samples (`--shards` shards of `--per-shard`, as packed shards hold hundreds to
  thousands of samples; more shards than a loader process keeps open, `MAX_OPEN_SHARDS`), in
  shard order (the target: at most 1 open per 100 samples) and, for comparison, in random order
  (the order CSV/JSONL sources keep).
Packing itself is reported as CPU seconds per sample (one process).

Usage: python bench/bench_packed_loader.py [--originals 64] [--passes 3] [--shards 80] [--per-shard 200]
Prints RATIO packed_loader_cpu (target <= 0.10), FIGURE packed_bytes_read_per_sample (kB, and RATIO
against 60 kB, target <= 1.0), RATIO packed_opens_per_sample (target <= 0.01 opens per sample).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import print_header, set_threads, write_shards
from mmkd.config import MAX_OPEN_SHARDS

STUDENT = {"size": 224, "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
           "interpolation": "bicubic", "resize_mode": "shortest"}


def write_originals(root: Path, n: int, per_shard: int = 8) -> tuple[Path, float]:
    """n samples of 1600 x 1200 JPEGs (quality 95) in shards; returns the folder and the mean JPEG size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = []
    root.mkdir(parents=True)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:06d}.tar", "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                coarse = Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).resize((1600, 1200),
                                                                                                  Image.BICUBIC)
                pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (1200, 1600, 3)).astype(np.int16)
                buf = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
                sizes.append(len(buf.getvalue()))
                for name, data in ((f"{i:07d}.jpg", buf.getvalue()), (f"{i:07d}.txt", b"a figure caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return root, float(np.mean(sizes))


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


OPENS = [0]


def _audit(event: str, args) -> None:
    if event == "open":
        OPENS[0] += 1


def read_all(data: str, order: str) -> dict[str, float]:
    """Read every sample once through the training loader (no workers); CPU, bytes and opens per sample."""
    from mmkd.config import DataConfig
    from mmkd.data.loader import batch_sampler, epoch_loader
    from mmkd.data.pairs import PairDataset, collate_pairs, index_source
    from mmkd.models.student import build_transforms

    records, _ = index_source(data, progress=False)
    transform = build_transforms(STUDENT, "random-resized-crop", 0.9)[0]
    dataset = PairDataset(records, transform)
    cfg = DataConfig(path=data, order=order, num_workers=0)
    sampler = batch_sampler(records, 8, 0, 1, 0, cfg)
    loader = epoch_loader(dataset, sampler, collate_pairs, 0, 0, 0, pin_memory=False)
    n = 0
    cpu, rchar, opens = time.process_time(), _rchar(), OPENS[0]
    for batch in loader:
        n += len(batch)
    return {"samples": n, "cpu_ms": 1e3 * (time.process_time() - cpu) / n, "bytes": (_rchar() - rchar) / n,
            "opens": (OPENS[0] - opens) / n}


def fastest(data: str, passes: int) -> dict[str, float]:
    """`read_all` in shard order, `passes` times; the pass with the least CPU per sample."""
    return min((read_all(data, "shards") for _ in range(passes)), key=lambda r: r["cpu_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=64, help="BIOMEDICA-size samples (a multiple of 8)")
    parser.add_argument("--passes", type=int, default=3, help="passes over each set; the fastest is reported")
    parser.add_argument("--shards", type=int, default=80, help="shards of small samples for the open count")
    parser.add_argument("--per-shard", type=int, default=200)
    args = parser.parse_args()
    set_threads()
    print_header("loader cost per sample: BIOMEDICA-size originals vs packed shards")
    sys.addaudithook(_audit)
    from mmkd.data.pack import pack

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        originals, jpeg_bytes = write_originals(root / "originals", args.originals)
        cpu = time.process_time()
        pack(str(originals), str(root / "packed"), size=256, quality=90, workers=1, progress=False)
        pack_ms = 1e3 * (time.process_time() - cpu) / args.originals
        orig = fastest(str(originals), args.passes)
        packed = fastest(str(root / "packed"), args.passes)
        many = write_shards(root / "many", args.shards * args.per_shard, image_size=16, per_shard=args.per_shard)
        rand = read_all(str(many), "random")
        ordered = read_all(str(many), "shards")
    print(f"originals: {jpeg_bytes / 1e6:.2f} MB JPEG each; packing: {pack_ms:.1f} ms CPU per sample")
    for name, r in (("originals", orig), ("packed", packed), ("small, random order", rand),
                    ("small, shard order", ordered)):
        print(f"{name:<20} {r['cpu_ms']:7.2f} ms CPU/sample  {r['bytes'] / 1e3:8.1f} kB read/sample  "
              f"{r['opens']:.4f} opens/sample  ({r['samples']} samples)", flush=True)
    print(json.dumps({"originals": orig, "packed": packed, "random": rand, "shard_order": ordered,
                      "pack_ms_per_sample": pack_ms, "original_jpeg_bytes": jpeg_bytes}))
    print(f"FIGURE original_loader_cpu_ms: {orig['cpu_ms']:.2f} ms per sample (1600 x 1200 JPEG, 224-px transform)")
    print(f"FIGURE packed_loader_cpu_ms: {packed['cpu_ms']:.2f} ms per sample (256-px packed JPEG)")
    print(f"FIGURE pack_cpu_ms: {pack_ms:.2f} ms per sample packed (once)")
    print(f"RATIO packed_loader_cpu: {packed['cpu_ms'] / orig['cpu_ms']:.3f} (target <= 0.10: loader CPU per "
          f"training sample, packed / originals)")
    print(f"RATIO packed_bytes_read: {packed['bytes'] / 60e3:.3f} (target <= 1.0: {packed['bytes'] / 1e3:.1f} kB "
          f"read per packed sample / 60 kB; originals {orig['bytes'] / 1e3:.0f} kB)")
    print(f"FIGURE random_order_opens_per_sample: {rand['opens']:.3f} ({args.shards} shards of {args.per_shard}, "
          f"{MAX_OPEN_SHARDS} kept open)")
    print(f"RATIO packed_opens_per_sample: {ordered['opens']:.4f} (target <= 0.01: files opened per sample in shard "
          f"order, {args.shards} shards of {args.per_shard}; random order {rand['opens']:.3f})")


if __name__ == "__main__":
    main()
