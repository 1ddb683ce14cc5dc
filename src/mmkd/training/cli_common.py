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
    parser.add_argument("--overwrite", dest="_overwrite", action="store_true",
                        help="start over in an --out folder that already holds a run: removes only the files mmkd "
                             "wrote there and says which (= --train.overwrite true)")


def config_from_args(args: argparse.Namespace, rest: list[str], stage: str, base: dict | None = None) -> Config:
    from mmkd.config import build_config

    tokens = []
    for flag in FLAG_ALIASES:
        value = getattr(args, f"_flag_{flag.replace('-', '_')}", None)
        if value is not None:
            tokens += [f"--{FLAG_ALIASES[flag]}", value]
    if getattr(args, "_overwrite", False):
        tokens += ["--train.overwrite", "true"]
    return build_config(args.config, tokens + rest, stage=stage, base=base)


def exit_code(summary: dict, command: str, cfg: Config) -> int:
    """0 for a finished run; for one stopped by a signal, say where it stopped and how to resume, and return
    the shell's code for that signal (130 for SIGINT, 143 for SIGTERM), so `pretrain && distill` stops."""
    import signal
    import sys
    from pathlib import Path

    from mmkd.training.run_folder import resume_command
    from mmkd.utils.runs import latest_checkpoint

    if not summary.get("stopped_by_signal"):
        return 0
    name = summary.get("signal") or "SIGTERM"
    run_dir = Path(cfg.train.out)
    print(f"mmkd {command}: stopped by {name} at step {summary['num_steps']} of {summary['total_steps']}; "
          f"checkpoint {latest_checkpoint(run_dir)}. Resume with:\n  {resume_command(command, run_dir)}\n"
          f"(under torchrun: the same arguments after `-m mmkd`)", file=sys.stderr)
    return 128 + int(getattr(signal, name, signal.SIGTERM))
