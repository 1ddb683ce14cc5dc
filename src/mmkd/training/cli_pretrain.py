"""`mmkd pretrain`: stage 1, CLIP pretraining of the student on image-text pairs."""

from __future__ import annotations

import argparse
import json

ACCEPTS_OVERRIDES = True
DESCRIPTION = """Stage 1: CLIP pretraining of the student on image-text pairs.

Symmetric InfoNCE over the global batch (features gathered across processes), learnable logit
scale clamped at ln 100, AdamW with warm-up and cosine decay, bf16 autocast on CUDA. Writes
RUN/config.yaml, metrics.jsonl, TensorBoard scalars, checkpoints/ and summary.json.
The authors' stage 1 is --config configs/mmkd_b16/pretrain-paper.yaml (fp32, no clipping, their local
loss: --loss.local true --loss.gather_with_grad false, a per-process batch). --val.data PAIRS and/or
--val.datasets CATALOG validate during training; --val.keep_best METRIC keeps RUN/best (--init RUN:best).

Example:
  mmkd pretrain --data pairs.csv --model mmkd-tiny-vit --out runs/s1 --epochs 5 --batch-size 64 --lr 5e-4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmkd.training.cli_common import add_run_arguments

    add_run_arguments(parser, "pretrain")


def run(args: argparse.Namespace) -> int:
    from mmkd.training.cli_common import config_from_args, exit_code, print_run_summary
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask
    from mmkd.utils.console import Summary

    started = Summary("pretrain")
    cfg = config_from_args(args, getattr(args, "_rest", []), stage="pretrain")
    summary = fit(cfg, ClipTask)
    print(json.dumps({k: summary[k] for k in ("num_steps", "num_samples_seen", "num_skipped_samples", "final_loss",
                                              "samples_per_s")}, indent=None))
    print_run_summary(summary, cfg, started)
    return exit_code(summary, "pretrain", cfg)
