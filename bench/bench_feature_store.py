"""Random batches of 256 rows: FeatureStore (memmap) against the authors' per-sample pickles.

Baseline: the MMKD-CLIP authors' layout, one pickle per sample as their `clips_output.pt`,
here holding every teacher's raw image and text embedding, read with torch.load (here
weights_only=True) per sample. Both layouts hold the same features (8 teachers, dims as in the
paper) and are read warm from the page cache, so the ratio measures the format, not the disk.
The authors' stage-2 loader reads the sibling `clips_project_output.pt` instead
(wangshansong1/MMKD-CLIP `src/training/data.py`, commit 127544c): the sample's available teachers
only, projected to 512-d, so fewer and smaller tensors than this baseline holds.

The store's read is one gather of whole rows, so its floor is the machine's memory copy: the run
also times a copy of the same number of bytes from one contiguous buffer into a new array
(`FIGURE feature_store_vs_memcpy`), which says how much of the ratio the format can still
move and how much is the pickle baseline's speed on the machine.

A store at the paper's scale (60-500 GB) is larger than the page cache, so most batch reads of a
real run start cold. `FIGURE feature_store_vs_pickle_cold` reads a few batches with both layouts'
pages dropped from the page cache before each (`posix_fadvise(DONTNEED)` on every file, Linux;
the store is opened afresh for each batch, since mapped pages are not dropped). Directory entries
and inodes stay cached, which favours the pickles (one file a sample).

Usage: python bench/bench_feature_store.py [--samples 3000] [--batches 20] [--cold-batches 5]
Prints `RATIO feature_store_vs_pickle: <x> (target >= 1000x)`, `FIGURE feature_store_vs_memcpy` and
`FIGURE feature_store_vs_pickle_cold`.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry

TEACHERS = {"BMCA": 768, "BiomedCLIP": 512, "UniMedCLIP": 512, "PMCCLIP": 768, "QuiltNet": 512,
            "GenMedClip": 512, "PLIP": 512, "PUBMEDCLIP": 512}
BATCH = 256


def build(root: Path, num_samples: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    feats = {t: (rng.standard_normal((num_samples, d)).astype(np.float16),
                 rng.standard_normal((num_samples, d)).astype(np.float16)) for t, d in TEACHERS.items()}
    ids = [f"s{i}" for i in range(num_samples)]
    entries = [TeacherEntry(t, d, {"weights": {t: t}}) for t, d in TEACHERS.items()]
    writer = FeatureStoreWriter.open(root / "store", ids, entries, chunk_rows=1024)
    for c in range(writer.num_chunks):
        a, b = writer.chunk_bounds(c)
        for t in TEACHERS:
            writer.write_chunk(c, t, {"image": feats[t][0][a:b], "text": feats[t][1][a:b],
                                      "available": np.ones(b - a, bool), "score": np.zeros(b - a, np.float32)})
    writer.finalize()
    pickles = root / "pickles"
    for i in range(num_samples):
        folder = pickles / ids[i]
        folder.mkdir(parents=True)
        torch.save({f"{t}_{k}": torch.from_numpy(feats[t][j][i].astype(np.float32))
                    for t in TEACHERS for j, k in enumerate(("img", "txt"))}, folder / "clips_output.pt")
    return root / "store", pickles


def read_pickles(pickles: Path, ids: list[str], rows: np.ndarray) -> dict[str, torch.Tensor]:
    samples = [torch.load(pickles / ids[r] / "clips_output.pt", weights_only=True) for r in rows]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def drop_page_cache(*roots: Path) -> None:
    """Drop every file under `roots` from the page cache (clean pages only: the files are synced)."""
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def cold_reads(store_path: Path, pickles: Path, ids: list[str], batches: list[np.ndarray]) -> tuple[float, float]:
    """Median seconds a batch of (pickles, store) with the page cache dropped before each read."""
    t_pickle, t_store = [], []
    for rows in batches:
        drop_page_cache(pickles, store_path)
        t0 = time.perf_counter()
        read_pickles(pickles, ids, rows)
        t_pickle.append(time.perf_counter() - t0)
        drop_page_cache(pickles, store_path)
        store = FeatureStore(store_path)
        t0 = time.perf_counter()
        store.rows(rows)
        t_store.append(time.perf_counter() - t0)
        del store
        gc.collect()  # unmap it, so the next drop reaches its pages
    return float(np.median(t_pickle)), float(np.median(t_store))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cold-batches", type=int, default=5, help="batches read with a cold page cache (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store_path, pickles = build(Path(tmp), args.samples)
        os.sync()  # clean pages, which the cold reads can drop
        store = FeatureStore(store_path)
        ids = store.sample_ids
        rng = np.random.default_rng(1)
        batches = [rng.choice(args.samples, BATCH, replace=False) for _ in range(args.batches)]
        read_pickles(pickles, ids, batches[0])  # warm both caches
        store.rows(batches[0])
        t0 = time.perf_counter()
        for rows in batches:
            base = read_pickles(pickles, ids, rows)
        t_pickle = (time.perf_counter() - t0) / len(batches)
        repeats = 50
        t0 = time.perf_counter()
        for _ in range(repeats):
            for rows in batches:
                got = store.rows(rows)
        t_store = (time.perf_counter() - t0) / (len(batches) * repeats)
        nbytes = sum(a.nbytes for kind in ("image", "text") for a in got[kind].values()) + got["available"].nbytes
        flat = np.ones(nbytes, np.uint8)  # the same bytes, contiguous, resident
        t0 = time.perf_counter()
        for _ in range(repeats * len(batches)):
            np.array(flat)
        t_copy = (time.perf_counter() - t0) / (len(batches) * repeats)
        del store
        gc.collect()  # unmapped, so the cold reads can drop its pages
        cold = None
        if args.cold_batches and hasattr(os, "posix_fadvise"):
            cold = cold_reads(store_path, pickles, ids, batches[:args.cold_batches])
        last = batches[-1]
        assert np.array_equal(got["image"]["PLIP"], base["PLIP_img"].numpy().astype(np.float16)), "layouts disagree"
        print(f"pickle per sample: {t_pickle * 1e3:8.2f} ms / batch of {BATCH} ({BATCH / t_pickle:,.0f} rows/s)")
        print(f"FeatureStore.rows: {t_store * 1e3:8.3f} ms / batch of {BATCH} ({BATCH / t_store:,.0f} rows/s)")
        print(f"memory copy:       {t_copy * 1e3:8.3f} ms for the same {nbytes / 2**20:.1f} MiB "
              f"({nbytes / t_copy / 1e9:.1f} GB/s)")
        print(f"FIGURE feature_store_vs_memcpy: {t_store / t_copy:.2f}x (a batch read / a copy of its bytes)")
        if cold:
            print(f"cold page cache:   pickle per sample {cold[0] * 1e3:.1f} ms, FeatureStore.rows {cold[1] * 1e3:.2f} ms "
                  f"/ batch of {BATCH} (median of {min(args.cold_batches, len(batches))})")
            print(f"FIGURE feature_store_vs_pickle_cold: {cold[0] / cold[1]:.0f}x (page cache dropped before each batch)")
        else:
            print("cold page cache: not measured (--cold-batches 0, or no posix_fadvise on this system)")
        print(f"RATIO feature_store_vs_pickle: {t_pickle / t_store:.0f}x (target >= 1000x)")
        del last


if __name__ == "__main__":
    main()
