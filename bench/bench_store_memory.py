"""Resident memory of stage 2 reading teacher features from stores of 1 M and 10 M rows.

For each store size a fresh process does what `DistillTask` does, through its own code:
builds the task (opens the store, maps every training sample id to its store row), then
computes the distillation loss of `--batches` random batches of `--batch` rows (store reads
of every teacher's image and text rows, the random-available policy, the alignment
projection, FD and ICL) with random student outputs in place of a student forward (which
costs the same at any store size). The training set is the same `--train-rows` samples for
both sizes, spread evenly over the store (a store extracted for a larger corpus than the run
trains on), so only the store's size changes between the two measurements.

Memory is read from /proc/self/status after each phase and after every batch:
RssAnon (memory the process holds), RssFile (pages of the memory-mapped store files the
reads touched; page cache the kernel can drop at any time) and VmHWM (peak of their sum).
The ratio compares the peak RssAnon of the two sizes.

Disk: each store is rows x teachers x 2 x dim x 2 bytes (float16) plus 5 bytes per row and
teacher; the defaults (3 teachers x 16 dims) need about 2.1 GB for 10 M rows. The script
checks the free space first and scales the largest size down (saying so) when it is short.

Usage: python bench/bench_store_memory.py [--rows 1000000,10000000] [--teachers 3] [--dim 16]
Prints `RATIO store_memory_10m_vs_1m: <peak RssAnon(10 M) / peak RssAnon(1 M)>x (target <= 1.10)`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import print_header, rss_mib

HERE = Path(__file__).resolve().parent


def store_bytes(rows: int, teachers: int, dim: int) -> int:
    return rows * teachers * (2 * dim * 2 + 1 + 4) + rows * 12


def write_store(path: Path, rows: int, teachers: int, dim: int, latent_dim: int, chunk_rows: int = 1 << 20) -> float:
    """A complete store of `rows` rows through FeatureStoreWriter, in large chunks; returns seconds."""
    import torch

    from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry
    from mmkd.models.alignment import WEIGHTS_FILE, AlignmentAE, save_alignment

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    names = [f"teacher{k}" for k in range(teachers)]
    entries = [TeacherEntry(t, dim, provenance={"weights": {t: "bench"}}) for t in names]
    writer = FeatureStoreWriter.open(path, [f"s{i:08d}" for i in range(rows)], entries, chunk_rows=chunk_rows)
    # One block of random unit vectors, reused for every chunk (the content does not matter here).
    block = rng.standard_normal((chunk_rows, dim)).astype(np.float32)
    block = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float16)
    avail = rng.random(chunk_rows) < 0.75
    score = np.ones(chunk_rows, np.float32)
    for c in range(writer.num_chunks):
        a, b = writer.chunk_bounds(c)
        for t in names:
            writer.write_chunk(c, t, {"image": block[:b - a], "text": block[:b - a], "available": avail[:b - a],
                                      "score": score[:b - a]})
    writer.finalize()
    torch.manual_seed(0)
    save_alignment(AlignmentAE({t: dim for t in names}, latent_dim), path / WEIGHTS_FILE, FeatureStore(path), {})
    return time.perf_counter() - t0


def write_training_csv(path: Path, store_rows: int, train_rows: int) -> Path:
    """A CSV of `train_rows` samples whose ids are spread evenly over the store's rows."""
    stride = max(1, store_rows // train_rows)
    with open(path, "w") as f:
        f.write("image,caption,sample_id\n")
        for i in range(0, stride * train_rows, stride):
            f.write(f"img/{i}.png,a caption,s{i:08d}\n")
    return path


def measure(store: Path, csv: Path, batches: int, batch: int) -> dict:
    """Run in a fresh process: build a DistillTask and compute its loss on random batches."""
    import torch

    from mmkd.config import build_config
    from mmkd.data.pairs import Batch
    from mmkd.models.student import create_student
    from mmkd.training.stage2 import DistillTask

    phases = {"imports": rss_mib()}
    cfg = build_config(None, ["--data", str(csv), "--store", str(store), "--model", "mmkd-tiny-vit",
                              "--train.device", "cpu"], stage="distill")
    student = create_student("mmkd-tiny-vit", seed=0)
    phases["student"] = rss_mib()
    t0 = time.perf_counter()
    task = DistillTask(student, cfg, torch.device("cpu"))
    build_s = time.perf_counter() - t0
    phases["task built (store opened, ids mapped)"] = rss_mib()
    num_train = len(task.row_of_index)
    rng = np.random.default_rng(0)
    peak_anon = max(p.get("RssAnon", 0.0) for p in phases.values())
    t0 = time.perf_counter()
    for _ in range(batches):
        idx = torch.from_numpy(rng.choice(num_train, batch, replace=False))
        b = Batch(images=torch.empty(0), captions=["x"] * batch, indices=idx, sample_ids=[""] * batch,
                  modalities=[""] * batch, skipped={})
        e = student.embed_dim
        outputs = {"image": torch.nn.functional.normalize(torch.randn(batch, e), dim=-1),
                   "text": torch.nn.functional.normalize(torch.randn(batch, e), dim=-1),
                   "logit_scale": torch.tensor(14.3), "icl_temperature": torch.tensor(0.07)}
        terms = task.losses(outputs, b, 0, 1)
        assert torch.isfinite(terms["loss"])
        peak_anon = max(peak_anon, rss_mib().get("RssAnon", 0.0))
    read_s = time.perf_counter() - t0
    phases[f"after {batches} batches"] = rss_mib()
    return {"phases": phases, "peak_anon_mib": peak_anon, "peak_rss_mib": rss_mib()["VmHWM"],
            "build_s": build_s, "read_s": read_s, "rows_per_s": batches * batch / read_s,
            "num_train": num_train, "num_store_rows": task.store.num_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,10000000", help="store sizes (rows), comma-separated")
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--dim", type=int, default=16, help="teacher embedding dim (memory per row read)")
    parser.add_argument("--train-rows", type=int, default=100_000, help="training samples (same for every size)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    parser.add_argument("--measure", nargs=2, metavar=("STORE", "CSV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]), args.batches, args.batch)))
        return

    print_header("stage-2 store reads: resident memory vs store size")
    sizes = [int(s) for s in args.rows.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        free = shutil.disk_usage(root).free
        need = sum(store_bytes(n, args.teachers, args.dim) for n in sizes)
        if need > 0.5 * free:  # leave room for everyone else on the disk
            scale = 0.5 * free / need
            sizes = [max(args.train_rows, int(n * scale)) for n in sizes]
            print(f"NOTE: {need / 1e9:.1f} GB needed but {free / 1e9:.1f} GB free; store sizes scaled to {sizes}")
        results = {}
        for n in sizes:
            store = root / f"store-{n}"
            secs = write_store(store, n, args.teachers, args.dim, latent_dim=64)
            size_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9
            print(f"store {n:>11,} rows x {args.teachers} teachers x {args.dim} dims: {size_gb:.2f} GB written in "
                  f"{secs:.1f} s ({size_gb / secs * 1000:.0f} MB/s)", flush=True)
            csv = write_training_csv(root / f"train-{n}.csv", n, args.train_rows)
            out = subprocess.run([sys.executable, __file__, "--measure", str(store), str(csv),
                                  "--batches", str(args.batches), "--batch", str(args.batch)],
                                 capture_output=True, text=True, cwd=HERE)
            if out.returncode:
                sys.exit(f"measurement failed for {n} rows:\n{out.stderr[-3000:]}")
            r = results[n] = json.loads(out.stdout.strip().splitlines()[-1])
            for phase, m in r["phases"].items():
                print(f"  {phase:<40} RssAnon {m.get('RssAnon', 0):8.1f} MiB  RssFile {m.get('RssFile', 0):8.1f} MiB")
            print(f"  peak RssAnon {r['peak_anon_mib']:.1f} MiB, peak RSS (VmHWM) {r['peak_rss_mib']:.1f} MiB; "
                  f"task built in {r['build_s']:.1f} s; {r['rows_per_s']:,.0f} rows/s through DistillTask.losses",
                  flush=True)
            shutil.rmtree(store)
        small, large = results[sizes[0]], results[sizes[-1]]
        ratio = large["peak_anon_mib"] / small["peak_anon_mib"]
        grow = (large["peak_anon_mib"] - small["peak_anon_mib"]) / max(1, sizes[-1] - sizes[0]) * 2**20
        print(f"anonymous memory growth with store size: {grow:.0f} bytes per store row")
        print(f"peak RSS incl. page cache: {large['peak_rss_mib']:.0f} / {small['peak_rss_mib']:.0f} MiB = "
              f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x")
        print(f"RATIO store_memory_10m_vs_1m: {ratio:.2f}x (target <= 1.10: peak RssAnon at {sizes[-1]:,} rows / "
              f"at {sizes[0]:,} rows, {args.train_rows:,} training samples)")


if __name__ == "__main__":
    main()
