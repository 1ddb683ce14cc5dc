"""Our stage-1 training step against a minimal loop written directly with open_clip.

Ours: `mmkd.training.loop.fit(cfg, ClipTask)` — the real loop with everything it does per step
(lr rule, accumulation bookkeeping, finite-loss check, grad clipping, logit-scale clamp,
JSON/TensorBoard metrics every 10 steps, skip counting).
Baseline: a plain loop over open_clip's own model forward and `open_clip.loss.ClipLoss`, with
the same AdamW parameter groups, grad clipping at 1.0 and logit-scale clamp, and nothing else.

Fairness: both build the same student (same config, same seed, so the same initial weights),
read the same CSV through the same loader (mmkd's PairDataset + ResumableBatchSampler, seed 0,
same batch order, 0 workers) and tokenise with the same tokenizer; the timed window is the same
steps (after `--warmup` steps, up to the last one) for both, so start-up and the final
checkpoint of `fit` are left out. Runs alternate ours/baseline `--repeats` times, every other pair
in the other order.

What is compared: each run's fastest 5-step window (ours from `fit`'s metrics, logged every 5 steps;
the baseline timed the same way). Other jobs on a shared machine can only add time to a window, so
the fastest one is closest to the step's own cost, while the mean over the whole window moves with
the load. The median of the paired ratios is the RATIO; the ratio of the whole windows' means is
printed beside it.

Usage: python bench/bench_pretrain_step.py [--model mmkd-tiny-vit] [--batch 32] [--steps 25]
Prints `RATIO pretrain_step_vs_open_clip: <ours/baseline step time>x (target <= 1.05)`.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from _common import median, print_header, set_threads, steady_rate, window_seconds, write_pairs_csv


def run_ours(csv: Path, out: Path, args) -> tuple[float, list[float]]:
    """Samples/s of `fit` between step `warmup` and the last step, and its 5-step windows' seconds."""
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask

    cfg = build_config(None, ["--data", str(csv), "--model", args.model, "--out", str(out),
                              "--batch-size", str(args.batch), "--max-steps", str(args.steps),
                              "--optim.warmup_steps", "10", "--train.device", "cpu", "--train.progress", "false",
                              "--train.log_every", "5", "--seed", "0"])
    fit(cfg, ClipTask)
    return steady_rate(out, args.batch, args.warmup), window_seconds(out, args.batch, args.warmup)


def run_baseline(csv: Path, args) -> tuple[float, list[float]]:
    """Samples/s of a minimal open_clip loop over the same model, data and batches, and its 5-step windows."""
    import open_clip
    from torch.utils.data import DataLoader

    from mmkd.config import DataConfig
    from mmkd.data.pairs import PairDataset, collate_pairs
    from mmkd.data.sampler import ResumableBatchSampler
    from mmkd.models.student import create_student

    torch.manual_seed(0)
    student = create_student(args.model, seed=0)
    model, tokenizer = student.model, student.tokenizer
    dataset, _ = PairDataset.from_config(DataConfig(path=str(csv)), student.train_transform)
    loader = DataLoader(dataset, batch_sampler=ResumableBatchSampler(len(dataset), args.batch, seed=0),
                        collate_fn=collate_pairs, num_workers=0)
    # open_clip's own training recipe: no weight decay on gains, biases and the logit scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}],
        lr=5e-5, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.loss.ClipLoss()
    model.train()
    t_start, marks = None, []
    for step, batch in enumerate(loader, 1):
        for g in optimizer.param_groups:  # the same warm-up/cosine rule, inline
            g["lr"] = 5e-5 * min(1.0, step / 10) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        images, tokens = batch.images, tokenizer(batch.captions)
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step == args.warmup:
            t_start = time.perf_counter()
        if step >= args.warmup and step % 5 == 0:
            marks.append(time.perf_counter())
        if step == args.steps:
            break
    windows = [b - a for a, b in zip(marks, marks[1:])]
    return (args.steps - args.warmup) * args.batch / (time.perf_counter() - t_start), windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mmkd-tiny-vit", help="student config (default: mmkd-tiny-vit, "
                        "ViT width 64 x 2 layers on 32 px + text width 64 x 2 layers)")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--steps", type=int, default=25, help="steps per run (a multiple of 5)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing (a multiple of 5)")
    parser.add_argument("--repeats", type=int, default=7, help="alternating runs of each; the median is kept")
    args = parser.parse_args()
    set_threads()
    print_header("stage-1 step: mmkd fit vs a minimal open_clip loop (same model, loader, batches)")
    ours, base, ours_best, base_best = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = write_pairs_csv(root / "data", args.batch * (args.steps + 1), image_size=32)
        for r in range(args.repeats):
            runs = [lambda: run_ours(csv, root / f"ours{r}", args), lambda: run_baseline(csv, args)]
            if r % 2:  # every other pair runs the baseline first, so neither side always follows the other
                runs.reverse()
            results = [run() for run in runs]
            (rate, windows), (base_rate, base_windows) = results if r % 2 == 0 else results[::-1]
            ours.append(rate)
            ours_best.append(min(windows))
            base.append(base_rate)
            base_best.append(min(base_windows))
            print(f"repeat {r}: ours {ours[-1]:7.1f} samples/s, open_clip loop {base[-1]:7.1f} samples/s; fastest "
                  f"5 steps: ours {1000 * ours_best[-1]:6.1f} ms, open_clip loop {1000 * base_best[-1]:6.1f} ms")
    # Each repeat runs ours and the baseline back to back: the median of those paired ratios is
    # steadier on a shared machine than the ratio of the two medians.
    ratio = median([o / b for o, b in zip(ours_best, base_best)])
    print(f"whole window, median of paired ratios: {median([b / o for b, o in zip(base, ours)]):.3f}x")
    print(f"ours:     {median(ours):7.1f} samples/s ({1000 * args.batch / median(ours):6.1f} ms/step, median)")
    print(f"baseline: {median(base):7.1f} samples/s ({1000 * args.batch / median(base):6.1f} ms/step, median)")
    print(f"RATIO pretrain_step_vs_open_clip: {ratio:.3f}x (target <= 1.05: our step time / minimal open_clip loop's, "
          f"fastest 5-step window of each run)")


if __name__ == "__main__":
    main()
