"""The persistent data index against the rescan every launch did before it, on BIOMEDICA-style shards.

For each size (default 100 k and 1 M samples) the script writes synthetic BIOMEDICA-style
shards (`mmkd.synth.biomedica`: licence subset folders, a .jpg, .json and .txt member per
sample, tiny members) and measures, each in a fresh process:
  - rescan: what mmkd did on every launch and in every process before the index: list every
    tar with `tarfile` and keep one `PairRecord` per sample (the code of mmkd 0.x up to commit
    c8a6f40, copied below as the baseline): seconds and resident memory it adds;
  - build: the first launch, `ensure_index` with `--workers` processes (every shard's headers
    and every sample's JSON read once): seconds;
  - open: a later launch, `index_source` on the same shards (index.json, one stat per shard,
    the arrays memory-mapped): seconds (median of 3 fresh processes) and the memory it adds
    (VmRSS after minus before, and RssAnon), then after building 10,000 random records;
  - index bytes per sample on disk.
Then a CSV of `--csv-rows` records (~240-character captions) is indexed both ways and the
memory each keeps per record is compared (the pre-index reader held every caption and row).

Targets (issue 16): a later launch opens the 1 M-sample index in <= 2 s with <= 50 MB RSS per
process; open >= 100x faster than the rescan; <= 64 bytes of memory per CSV/JSONL record.
Prints `RATIO shard_index_open_vs_rescan: ...` for the largest size and `FIGURE` lines; a
missed target is printed as "below target".

Usage: python bench/bench_shard_index.py [--sizes 100000,1000000] [--per-shard 10000] [--workers 2]
       [--csv-rows 200000] [--dir DIR] [--wids-path DIR]
The 1 M-sample shards take ~3 GB of disk (tiny members are padded to 512-byte tar blocks).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import print_header, rss_mib  # noqa: E402

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


# ---- the baseline: mmkd's data path before the persistent index (commit c8a6f40) --------------
def rescan_shards(shards: list[str], caption_key: str = "caption"):
    """Records of webdataset shards, listed with tarfile on every launch (the pre-index code)."""
    from mmkd.data.pairs import PairRecord

    records = []
    broken: Counter = Counter()
    for shard in shards:
        groups: dict[str, dict[str, tuple[str, int, int]]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    dirname, base = os.path.split(member.name)
                    key, _, ext = base.partition(".")
                    key = f"{dirname}/{key}" if dirname else key
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext.lower()] = (shard, member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError):
            broken["bad_tar_member"] += 1
        shard_name = Path(shard).stem
        for key in order:
            members = groups[key]
            image = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if "txt" in members:
                caption, json_key = members["txt"], ""
            elif "json" in members:
                caption, json_key = members["json"], caption_key
            else:
                caption, json_key = None, ""
            records.append(PairRecord(sample_id=f"{shard_name}/{key}", image=image, caption=caption,
                                      caption_json_key=json_key))
    return records, broken


def reread_table(path: str):
    """Records of a CSV, every row and caption held in memory (the pre-index code)."""
    from mmkd.data.pairs import PairRecord, read_table

    root = Path(path).parent
    records = []
    for i, row in enumerate(read_table(Path(path), "csv")):
        image = row.get("image")
        records.append(PairRecord(sample_id=str(row.get("sample_id") or i), image=str(root / image) if image else None,
                                  caption=row.get("caption") or "", modality=str(row.get("modality") or "")))
    return records


# ---- measurements in a fresh process ---------------------------------------------------------
def child(mode: str, data: str, workers: int) -> dict:
    import numpy as np

    import yaml  # noqa: F401  (every module a launch imports anyway is loaded before the baseline RSS and timer)

    import mmkd.data.index_build  # noqa: F401
    import mmkd.data.select  # noqa: F401
    from mmkd.data.pairs import expand_shards, index_source

    if mode == "wids":  # webdataset's wids (0.2.x): each process indexes every shard it opens, in memory
        from wids import wids

        shards = expand_shards(data)
        before = rss_mib()
        t0 = time.perf_counter()
        opened = [wids.IndexedTarSamples(path=s) for s in shards]
        seconds = time.perf_counter() - t0
        after = rss_mib()
        return {"seconds": seconds, "num_records": sum(len(o) for o in opened),
                "rss_delta_mib": after["VmRSS"] - before["VmRSS"], "anon_delta_mib": after["RssAnon"] - before["RssAnon"]}
    before = rss_mib()
    t0 = time.perf_counter()
    if mode == "rescan":
        records, _ = rescan_shards(expand_shards(data))
    elif mode == "csv-reread":
        records = reread_table(data)
    elif mode == "build":
        records, _ = index_source(data, index_workers=workers, progress=False)
    else:  # open
        records, _ = index_source(data, progress=False)
    seconds = time.perf_counter() - t0
    after = rss_mib()
    out = {"seconds": seconds, "num_records": len(records), "rss_mib": after.get("VmRSS", 0.0),
           "rss_delta_mib": after.get("VmRSS", 0.0) - before.get("VmRSS", 0.0),
           "anon_delta_mib": after.get("RssAnon", 0.0) - before.get("RssAnon", 0.0)}
    if mode == "open":
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        picks = rng.integers(0, len(records), 10_000)
        for i in picks:
            records[int(i)]
        out["record_us"] = (time.perf_counter() - t0) / len(picks) * 1e6
        touched = rss_mib()
        out["rss_delta_after_10k_records_mib"] = touched.get("VmRSS", 0.0) - before.get("VmRSS", 0.0)
        out["anon_delta_after_10k_records_mib"] = touched.get("RssAnon", 0.0) - before.get("RssAnon", 0.0)
        index = getattr(records, "data_index", None)
        if index is not None:
            out["index_bytes_per_sample"] = index.nbytes() / max(1, index.num_samples)
    return out


def measure(mode: str, data: Path, workers: int = 1, extra_path: str = "") -> dict:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(data), "--workers", str(workers)],
                          capture_output=True, text=True, cwd=HERE, env=env)
    if proc.returncode:
        sys.exit(f"{mode} on {data} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_csv(path: Path, rows: int) -> Path:
    """A CSV of `rows` pairs with ~240-character captions (the images need not exist to index)."""
    import numpy as np

    from _common import synthetic_captions

    rng = np.random.default_rng(0)
    captions = synthetic_captions(1000, rng, 30, 45)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "sample_id", "modality"])
        for i in range(rows):
            w.writerow([f"img/{i:08d}.jpg", captions[i % 1000], f"s{i:08d}", ("ct", "mri", "xray")[i % 3]])
    return path


def verdict(ok: bool) -> str:
    return "meets target" if ok else "below target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="samples, comma-separated")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per shard (BIOMEDICA: 10,000)")
    parser.add_argument("--workers", type=int, default=2, help="indexing processes of the first launch")
    parser.add_argument("--csv-rows", type=int, default=200_000, help="records of the CSV memory comparison")
    parser.add_argument("--dir", default=None, help="where to write the shards (default: a temporary folder)")
    parser.add_argument("--wids-path", default="", help="a folder holding webdataset 0.2.x's `wids` package (e.g. "
                        "an unpacked webdataset==0.2.100 wheel): also measure its per-process shard indexing")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.workers)))
        return

    from mmkd.synth.biomedica import write_shards

    print_header("persistent shard index vs the rescan of every launch")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        os.environ["MMKD_CACHE"] = str(root / "cache")  # the indexes go with the shards, and go away with them
        free = shutil.disk_usage(root).free
        need = max(sizes) * 3 * 1024 * 1.05
        if need > 0.5 * free:
            sys.exit(f"{need / 1e9:.1f} GB needed for {max(sizes):,} samples but only {free / 1e9:.1f} GB free; "
                     f"use --dir elsewhere or smaller --sizes")
        for n in sizes:
            data = root / f"biomedica-{n}"
            t0 = time.perf_counter()
            write_shards(data, n, per_shard=args.per_shard)
            gb = sum(p.stat().st_size for p in data.rglob("*.tar")) / 1e9
            print(f"\n{n:,} samples: {gb:.2f} GB of shards ({-(-n // args.per_shard)} shards in commercial/, "
                  f"noncommercial/, other/) written in {time.perf_counter() - t0:.0f} s", flush=True)
            rescan = measure("rescan", data)
            print(f"  rescan (every launch, every process, before):  {rescan['seconds']:8.2f} s   "
                  f"+{rescan['rss_delta_mib']:7.1f} MiB RSS ({rescan['rss_delta_mib'] * 2**20 / n:.0f} B/sample)",
                  flush=True)
            build = measure("build", data, args.workers)
            print(f"  index build (first launch, {args.workers} workers):       {build['seconds']:8.2f} s   "
                  f"({build['seconds'] / n * 1e6:.0f} us/sample; {rescan['seconds'] / build['seconds']:.1f}x the "
                  f"rescan's speed)", flush=True)
            opens = [measure("open", data) for _ in range(3)]
            o = min(opens, key=lambda r: r["seconds"])
            open_s = statistics.median(r["seconds"] for r in opens)
            rss = statistics.median(r["rss_delta_mib"] for r in opens)
            print(f"  later launch: open                              {open_s:8.3f} s   +{rss:7.1f} MiB RSS "
                  f"(RssAnon +{o['anon_delta_mib']:.1f} MiB; process total {o['rss_mib']:.0f} MiB)", flush=True)
            print(f"  then 10,000 random records: {o['record_us']:.1f} us/record; RssAnon "
                  f"+{o['anon_delta_after_10k_records_mib']:.1f} MiB, RSS +{o['rss_delta_after_10k_records_mib']:.1f} "
                  f"MiB (the index pages they touched: page cache, shared by every process and reclaimable)",
                  flush=True)
            print(f"  index on disk: {o['index_bytes_per_sample']:.1f} bytes/sample", flush=True)
            if args.wids_path:
                w = measure("wids", data, extra_path=args.wids_path)
                print(f"  wids IndexedTarSamples (every process, every launch; no metadata): {w['seconds']:.2f} s, "
                      f"+{w['rss_delta_mib']:.1f} MiB RSS (RssAnon +{w['anon_delta_mib']:.1f} MiB)", flush=True)
            results[n] = {"rescan": rescan, "build": build, "open_s": open_s, "open_rss_mib": rss, "open": o}
            print(f"FIGURE index_build_s_{n}: {build['seconds']:.1f} s")
            print(f"FIGURE index_open_s_{n}: {open_s:.3f} s")
            print(f"FIGURE index_open_rss_mib_{n}: {rss:.1f} MiB")
            print(f"FIGURE rescan_s_{n}: {rescan['seconds']:.1f} s")
            print(f"FIGURE index_bytes_per_sample_{n}: {o['index_bytes_per_sample']:.1f}")
            shutil.rmtree(data)

        # Memory per record: the growth between a 1,000-record CSV and the big one, over the records added
        # (what a process holds once, whatever the size, is not per record).
        small, table = write_csv(root / "small.csv", 1000), write_csv(root / "pairs.csv", args.csv_rows)
        extra = args.csv_rows - 1000
        per = {}
        for mode in ("csv-reread", "open"):
            if mode == "open":
                measure("build", small, 1)
                t_build = measure("build", table, 1)["seconds"]
            a, b = measure(mode, small), measure(mode, table)
            per[mode] = (b, (b["rss_delta_mib"] - a["rss_delta_mib"]) * 2**20 / extra)
        (old, old_b), (new, new_b) = per["csv-reread"], per["open"]
        print(f"\nCSV of {args.csv_rows:,} records (~240-character captions):")
        print(f"  before: {old_b:.0f} B/record held, read in {old['seconds']:.1f} s by every launch")
        print(f"  index:  {new_b:.1f} B/record after opening ({new['seconds']:.3f} s; built once in {t_build:.1f} s); "
              f"RssAnon +{new['anon_delta_after_10k_records_mib']:.1f} MiB after 10,000 random records (file pages "
              f"they touch are page cache); {new['index_bytes_per_sample']:.1f} bytes/record on disk")
        print(f"FIGURE csv_bytes_per_record: {new_b:.1f} (target <= 64; before: {old_b:.0f}) -> {verdict(new_b <= 64)}")
        print(f"FIGURE csv_index_bytes_per_record_on_disk: {new['index_bytes_per_sample']:.1f}")

    big = max(sizes)
    r = results[big]
    ratio = r["rescan"]["seconds"] / r["open_s"]
    print(f"\n{big:,} samples: open {r['open_s']:.3f} s (target <= 2 s) -> {verdict(r['open_s'] <= 2)}; "
          f"+{r['open_rss_mib']:.1f} MiB per process (target <= 50 MB) -> {verdict(r['open_rss_mib'] * 1.048576 <= 50)}")
    print(f"RATIO shard_index_open_vs_rescan: {ratio:.0f}x (target >= 100: rescan {r['rescan']['seconds']:.1f} s / "
          f"open {r['open_s']:.3f} s at {big:,} samples) -> {verdict(ratio >= 100)}")


if __name__ == "__main__":
    main()
