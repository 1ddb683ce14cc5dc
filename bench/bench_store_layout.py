"""The page-aligned feature store: its disk cost, and the checksum pass that finishing a store adds.

A store's arrays are written by many ranks at once; format 3 pads every `.npy` header to 4 KiB and
widens rows where needed so that every chunk of every array starts on a 4,096-byte page (no page
holds rows of two ranks, which network filesystems need). This script builds stores with the paper's
nine teachers' dims (features, availability, scores, content digests) and reports:

- the bytes on disk per row against the bytes the rows hold (the unpadded version-2 layout), at the
  default 1,024-row chunks and at small chunks, where padding costs most;
- the time of the checksum pass run when a store is finished (and by `mmkd extract --verify`),
  against the time of writing the same rows.

Usage: python bench/bench_store_layout.py [--samples 8192]
Prints `RATIO store_bytes_aligned_vs_unpadded: <x> (target <= 1.01 ...)`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mmkd.data.content import ROW_BYTES
from mmkd.data.feature_store import FeatureStoreWriter, TeacherEntry

DIMS = [768, 512, 512, 768, 512, 512, 512, 512, 512]  # the paper's nine teachers (bench/scale_estimate.py)


def unpadded_row_bytes() -> int:
    """What a row holds: image + text float16 features, availability (1 byte), score (4 bytes) per teacher, digests."""
    return sum(2 * 2 * d + 1 + 4 for d in DIMS) + ROW_BYTES


def build(root: Path, num_samples: int, chunk_rows: int, write: bool) -> tuple[Path, float, float]:
    """A store of `num_samples` rows; with `write`, every chunk written and the store finished. Returns the folder,
    the seconds spent writing chunks and the seconds of `finalize` (its checksum pass)."""
    rng = np.random.default_rng(0)
    entries = [TeacherEntry(f"t{i}", d, {"weights": {f"t{i}": str(i)}}) for i, d in enumerate(DIMS)]
    writer = FeatureStoreWriter.open(root, [f"s{i}" for i in range(num_samples)], entries, chunk_rows=chunk_rows,
                                     record_content=True)
    if not write:
        return root, 0.0, 0.0
    t0 = time.perf_counter()
    for c in range(writer.num_chunks):
        a, b = writer.chunk_bounds(c)
        content = rng.integers(0, 255, (b - a, ROW_BYTES), np.uint8)
        for e in entries:
            feats = rng.standard_normal((b - a, e.embed_dim)).astype(np.float16)
            writer.write_chunk(c, e.name, {"image": feats, "text": feats, "available": np.ones(b - a, bool),
                                           "score": np.zeros(b - a, np.float32)}, content=content)
    t1 = time.perf_counter()
    writer.finalize()
    return root, t1 - t0, time.perf_counter() - t1


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.npy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8192)
    args = parser.parse_args()
    n = args.samples
    with tempfile.TemporaryDirectory() as tmp:
        store, write_s, finish_s = build(Path(tmp) / "default", n, 1024, write=True)
        per_row = disk_bytes(store) / n
        ratio = per_row / unpadded_row_bytes()
        small = build(Path(tmp) / "small", n, 100, write=False)[0]
        small_ratio = disk_bytes(small) / n / unpadded_row_bytes()
    print(f"rows {n}, 9 teachers, unpadded {unpadded_row_bytes()} bytes a row")
    print(f"FIGURE store_bytes_per_row_chunk1024: {per_row:.1f} bytes (headers of 4 KiB included)")
    print(f"FIGURE store_bytes_aligned_vs_unpadded_chunk100: {small_ratio:.3f}x")
    print(f"FIGURE store_write_us_per_row: {write_s / n * 1e6:.1f} us")
    print(f"FIGURE store_finish_checksum_us_per_row: {finish_s / n * 1e6:.1f} us "
          f"({finish_s / max(write_s, 1e-9):.2f}x the write time)")
    print(f"RATIO store_bytes_aligned_vs_unpadded: {ratio:.4f}x (target <= 1.01: disk bytes a row, 1,024-row "
          f"chunks, against the unpadded layout)")


if __name__ == "__main__":
    main()
