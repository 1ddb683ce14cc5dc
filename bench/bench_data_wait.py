"""Data-wait fraction of stage-1 training: CSV files vs webdataset shards, 0 vs 2 loader workers.

Each configuration runs `mmkd.training.loop.fit(cfg, ClipTask)` on the same JPEG images
(`--image-size` px, resized to the student's 32 px) and captions, once as a CSV of image
files and once as webdataset tar shards (read by seeking to indexed members), with
`data.num_workers` 0 and 2. The loop's own telemetry measures the time spent waiting for the
next batch; the figure printed is its share of the wall time between step `--warmup` and the
last step (worker start-up left out), also the share over the whole run as `summary.json`
reports it.

A tiny student makes this a hard case: its step is short, so decoding has to keep up with a
fast consumer. On a 2-core machine the 2 workers share the cores with the training process.

A third source is packed shards: webdataset shards of images twice `--image-size` packed by
`mmkd data pack` to `--image-size`, read with 2 workers in shard order.

Usage: python bench/bench_data_wait.py [--image-size 256] [--batch 32] [--steps 25]
Prints `RATIO data_wait_2_workers: <worst steady data-wait fraction with 2 workers> (target <= 0.10)` and
`RATIO data_wait_packed_2_workers: <the same on packed shards> (target <= 0.05)`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import print_header, set_threads, steady_rate, steady_wait_fraction, write_pairs_csv, write_shards


def run(data: str, workers: int, out: Path, args) -> dict:
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask

    cfg = build_config(None, ["--data", data, "--model", args.model, "--out", str(out), "--batch-size",
                              str(args.batch), "--max-steps", str(args.steps), "--train.device", "cpu",
                              "--train.progress", "false", "--train.log_every", "5", "--data.num_workers",
                              str(workers), "--optim.warmup_steps", "5"])
    summary = fit(cfg, ClipTask)
    return {"wait": steady_wait_fraction(out, args.batch, args.warmup), "wait_run": summary["data_wait_fraction"],
            "sps": steady_rate(out, args.batch, args.warmup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mmkd-tiny-vit")
    parser.add_argument("--image-size", type=int, default=256, help="side of the stored JPEG images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25, help="a multiple of 5")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out (a multiple of 5)")
    args = parser.parse_args()
    set_threads()
    print_header("data-wait fraction: CSV vs webdataset, 0 vs 2 workers")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = args.batch * (args.steps + 1)
        sources = {"csv": str(write_pairs_csv(root / "csv", n, args.image_size, ext="jpg")),
                   "webdataset": str(write_shards(root / "wds", n, args.image_size, per_shard=200))}
        for name, data in sources.items():
            for workers in (0, 2):
                r = results[(name, workers)] = run(data, workers, root / f"{name}-{workers}", args)
                print(f"{name:<10} {workers} workers: data wait {r['wait']:6.1%} of step time "
                      f"(whole run {r['wait_run']:6.1%}), {r['sps']:7.1f} samples/s", flush=True)
        from mmkd.data.pack import pack

        originals = write_shards(root / "originals", n, 2 * args.image_size, per_shard=400)
        pack(str(originals), str(root / "packed"), size=args.image_size, workers=1, progress=False)
        r = results[("packed", 2)] = run(str(root / "packed"), 2, root / "packed-2", args)
        print(f"{'packed':<10} 2 workers: data wait {r['wait']:6.1%} of step time (whole run {r['wait_run']:6.1%}), "
              f"{r['sps']:7.1f} samples/s (shards written by mmkd data pack, read in shard order)", flush=True)
    worst = max(results[(name, 2)]["wait"] for name in sources)
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}))
    print(f"RATIO data_wait_2_workers: {worst:.3f} (target <= 0.10: worst share of step time waiting for data "
          f"with 2 workers; with 0 workers: {max(results[(n, 0)]['wait'] for n in sources):.3f})")
    print(f"RATIO data_wait_packed_2_workers: {results[('packed', 2)]['wait']:.3f} (target <= 0.05: share of step "
          f"time waiting for data with 2 workers on packed shards)")


if __name__ == "__main__":
    main()
