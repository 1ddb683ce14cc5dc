"""Command-line plumbing shared by `mmkd pretrain` and `mmkd distill`."""

from __future__ import annotations

import argparse

from mmkd.config import FLAG_ALIASES, Config

OVERRIDES_HELP = """\
Every config field can be set as --section.key VALUE (e.g. --optim.lr 1e-4, --train.accum_steps 2);
see the YAML recipes in configs/ for all of them. Layers: defaults < --config FILE < flags.

Distributed: torchrun --nproc_per_node N -m mmkd {command} ...
  (multi-node: torchrun --nnodes M --node_rank R --master_addr HOST --master_port 29500 --nproc_per_node N ...)
"""


def add_run_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.epilog = OVERRIDES_HELP.format(command=command)
    parser.add_argument("--config", metavar="FILE", help="YAML recipe (sections data, model, optim, train, distill)")
    flag_help = {
        "data": "training pairs: CSV/JSONL (image paths relative to the file) or webdataset .tar shards",
        "model": "student: open_clip model name, model-config JSON, checkpoint folder, or mmkd-tiny-vit etc.",
        "init": "initial weights: checkpoint/run dir, .safetensors, or .pt/.bin (weights_only)",
        "out": "run directory (config.yaml, metrics.jsonl, checkpoints/, summary.json)",
        "epochs": "passes over the data", "batch-size": "global batch size (all processes)",
        "lr": "peak learning rate", "resume": "'latest' or a checkpoint folder",
        "seed": "random seed", "max-steps": "stop after this many steps", "store": "feature store (stage 2)",
        "device": "auto | cpu | cuda",
    }
    for flag in FLAG_ALIASES:
        parser.add_argument(f"--{flag}", dest=f"_flag_{flag.replace('-', '_')}", metavar="VALUE",
                            help=f"{flag_help.get(flag, '')} (= --{FLAG_ALIASES[flag]})")


def config_from_args(args: argparse.Namespace, rest: list[str], stage: str, base: dict | None = None) -> Config:
    from mmkd.config import build_config

    tokens = []
    for flag in FLAG_ALIASES:
        value = getattr(args, f"_flag_{flag.replace('-', '_')}", None)
        if value is not None:
            tokens += [f"--{FLAG_ALIASES[flag]}", value]
    return build_config(args.config, tokens + rest, stage=stage, base=base)
