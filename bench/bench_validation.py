"""What validation during training adds to a tiny run's time at the default interval (every epoch).

Two stage-1 runs through `mmkd.training.loop.fit` on the same data, student, batch, seed and
steps: one without validation, one with `--val.data` (held-out pairs, a share `--val-share` of
the training set's size) validated at the default `val.every 0` (end of every epoch and of the
run) and keeping the best checkpoint (`--val.keep_best val/clip_loss`, so the RUN/best write is
timed too). The whole `fit` is timed; runs alternate `--repeats` times and the median of the
paired ratios is reported.

Usage: python bench/bench_validation.py [--model mmkd-tiny-vit] [--batch 32] [--steps-per-epoch 16]
                                       [--epochs 2] [--val-share 0.0625] [--repeats 3]
Prints `RATIO validation_overhead: <with / without>x (target <= 1.05)`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import median, print_header, set_threads, timed, write_pairs_csv


def run(csv: Path, val: Path | None, out: Path, args) -> float:
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask

    flags = ["--data", str(csv), "--model", args.model, "--out", str(out), "--batch-size", str(args.batch),
             "--epochs", str(args.epochs), "--optim.warmup_steps", "10", "--train.device", "cpu",
             "--train.progress", "false", "--train.log_every", "5", "--seed", "0"]
    if val is not None:
        flags += ["--val.data", str(val), "--val.keep_best", "val/clip_loss"]
    cfg = build_config(None, flags)
    return timed(lambda: fit(cfg, ClipTask))


def validation_seconds(out: Path) -> float:
    """Time the run spent validating, from its own `val/seconds` lines."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sum(x.get("val/seconds", 0.0) for x in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mmkd-tiny-vit", help="student config")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-share", type=float, default=1 / 16, help="validation pairs / training pairs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads()
    print_header("validation during training: a tiny stage-1 run with and without --val.data")
    num_train = args.batch * args.steps_per_epoch
    num_val = max(2, round(num_train * args.val_share))
    base, with_val, inside = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = write_pairs_csv(root / "train", num_train, image_size=32)
        val = write_pairs_csv(root / "val", num_val, image_size=32, seed=1)
        print(f"{num_train} training pairs x {args.epochs} epochs (batch {args.batch}); {num_val} validation pairs, "
              f"validated at the default interval (every epoch)")
        for r in range(args.repeats):
            base.append(run(csv, None, root / f"base-{r}", args))
            with_val.append(run(csv, val, root / f"val-{r}", args))
            inside.append(validation_seconds(root / f"val-{r}"))
            print(f"repeat {r}: without {base[-1]:6.2f} s, with validation {with_val[-1]:6.2f} s "
                  f"({inside[-1]:.2f} s of it validating)")
    ratio = median([b / a for a, b in zip(base, with_val)])
    print(f"without: {median(base):.2f} s, with validation: {median(with_val):.2f} s (median)")
    print(f"FIGURE validation_share_of_run: {median([v / t for v, t in zip(inside, with_val)]):.3f} (the runs' own "
          f"val/seconds over their time)")
    print(f"RATIO validation_overhead: {ratio:.3f}x (target <= 1.05: run time with / without validation at the "
          f"default interval, {args.model}, validation set {args.val_share:.3g} of the training set)")


if __name__ == "__main__":
    main()
