"""Command-line plumbing shared by `mmkd pretrain` and `mmkd distill`.

Every config field is an option `--section.key VALUE`, listed by `--help` with its default and the
one-line meaning written beside it in mmkd.config (the one description of the fields). argparse
only collects the raw strings, in command-line order; mmkd.config parses and validates them, so a
run built from the command line and one built by `build_config` read values the same way.
"""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from mmkd.config import FLAG_ALIASES, Config

if TYPE_CHECKING:
    from mmkd.utils.console import Summary

OVERRIDES_HELP = """\
Layers: defaults < --config FILE|NAME < options. Every config field above can also be set in the YAML
recipe (section: {{key: value}}); `mmkd recipes` lists the packaged ones.

Distributed: torchrun --nproc_per_node N -m mmkd {command} ...
  (multi-node: torchrun --nnodes M --node_rank R --master_addr HOST --master_port 29500 --nproc_per_node N ...)
"""

FLAG_HELP = {
    "data": "training pairs: CSV/JSONL (image paths relative to the file) or webdataset .tar shards",
    "model": "student: open_clip model name, model-config JSON, checkpoint folder, or mmkd-tiny-vit etc.",
    "init": "initial weights: checkpoint/run dir, .safetensors, or .pt/.bin (weights_only)",
    "out": "run directory (config.yaml, metrics.jsonl, checkpoints/, summary.json)",
    "epochs": "passes over the data", "batch-size": "global batch size (all processes)",
    "lr": "peak learning rate", "resume": "'latest' or a checkpoint folder",
    "seed": "random seed", "max-steps": "stop after this many steps (0: all epochs)", "store": "feature store (stage 2)",
    "device": "auto | cpu | cuda",
}

SECTION_TITLES = {
    "data": "data: the training pairs",
    "model": "model: the student",
    "optim": "optim: AdamW and the learning-rate schedule",
    "train": "train: the run",
    "distill": "distill: stage 2",
    "loss": "loss: how processes share the CLIP loss",
    "val": "val: validation during training",
}


class _RawOverride(argparse.Action):
    """Keep `--section.key VALUE` as the raw pair, in command-line order, for mmkd.config to parse."""

    def __call__(self, parser, namespace, values, option_string=None):
        overrides = list(getattr(namespace, "_overrides", None) or [])
        overrides.append((option_string[2:], "true" if values is None else values))
        namespace._overrides = overrides


def format_default(value) -> str:
    """A default as a person writes it: 5e-5, 2000, runs/pretrain, true, none."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = f"{value:g}"
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}e{int(exponent)}" if e else text
    if value in ("", [], {}, None):
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).replace("%", "%%")


def add_run_arguments(parser: argparse.ArgumentParser, command: str, base: dict | None = None,
                      sections: tuple[str, ...] = ("data", "model", "optim", "train", "distill", "loss", "val")) -> None:
    """The options of a training command: --config, the short flags, and every config field.

    `base`: the command's own defaults over the dataclass ones (distill: lr 1e-6, ...), shown by --help.
    """
    from mmkd.config import field_defaults, field_docs, field_type_name

    defaults, docs = field_defaults(base), field_docs()
    parser.epilog = OVERRIDES_HELP.format(command=command)
    parser.usage = f"mmkd {command} [--config FILE] [OPTIONS] [--section.key VALUE ...]"
    parser.add_argument("--config", metavar="FILE|NAME", help="YAML recipe (sections data, model, optim, train, "
                        "distill, loss, val): a file, or a packaged recipe's name such as mmkd_b16/pretrain (`mmkd recipes`)")
    short = parser.add_argument_group("common options (short forms of config fields)")
    for flag, key in FLAG_ALIASES.items():
        if key.split(".")[0] not in sections:
            continue
        short.add_argument(f"--{flag}", dest=f"_flag_{flag.replace('-', '_')}", metavar="VALUE",
                           help=f"{FLAG_HELP.get(flag, docs.get(key, ''))} (= --{key}; "
                                f"default: {format_default(defaults[key])})")
    for section in sections:
        title = SECTION_TITLES.get(section, section)
        if section == "distill" and command != "distill":
            title += f" (read by `mmkd distill` only; ignored by `mmkd {command}`)"
        if section == "loss" and command != "pretrain":
            title += f" (read by `mmkd pretrain` only; `mmkd {command}` gathers every term with gradient)"
        group = parser.add_argument_group(f"config fields, {title}")
        for key, default in defaults.items():
            if key.split(".")[0] != section:
                continue
            type_name = field_type_name(key)
            doc = docs.get(key, "").replace("%", "%%")
            # An unset field whose comment says what happens by default ("default: STORE/...") needs no "none".
            shown = "" if default in ("", [], {}) and "default" in doc else f" (default: {format_default(default)})"
            group.add_argument(f"--{key}", action=_RawOverride, dest="_overrides", default=argparse.SUPPRESS,
                               nargs="?" if type_name == "BOOL" else None, metavar=type_name,
                               help=(doc + shown).strip())
    short.add_argument("--overwrite", dest="_overwrite", action="store_true",
                       help="start over in an --out folder that already holds a run: removes only the files mmkd "
                            "wrote there and says which (= --train.overwrite true)")


def config_from_args(args: argparse.Namespace, rest: list[str], stage: str, base: dict | None = None) -> Config:
    from mmkd.config import build_config

    tokens = []
    for flag in FLAG_ALIASES:
        value = getattr(args, f"_flag_{flag.replace('-', '_')}", None)
        if value is not None:
            tokens += [f"--{FLAG_ALIASES[flag]}", value]
    for key, value in getattr(args, "_overrides", None) or []:
        tokens += [f"--{key}={value}"]
    if getattr(args, "_overwrite", False):
        tokens += ["--train.overwrite", "true"]
    from mmkd.errors import UsageError
    from mmkd.training.validation import resolve_init

    cfg = build_config(args.config, tokens + list(rest), stage=stage, base=base)
    try:
        cfg.model.init = resolve_init(cfg.model.init)  # RUN:best -> RUN/best
    except UsageError:
        from mmkd.training.loop import own_resume_checkpoint

        if not cfg.train.resume or own_resume_checkpoint(cfg) is None:
            raise  # a resume of the run's own checkpoint does not read --init (its run may be gone)
    return cfg


def print_run_summary(summary: dict, cfg: Config, started: Summary) -> None:
    """The human summary of a training run on stderr: run folder, checkpoint, steps, samples, loss, speed, time."""
    from mmkd.utils.console import skipped_line
    from mmkd.utils.runs import latest_checkpoint

    run_dir = cfg.train.out
    ckpt = latest_checkpoint(run_dir)
    started.add("run folder", run_dir)
    started.add("checkpoint", ckpt if ckpt is not None else "none written")
    steps = f"{summary['num_steps']:,} of {summary['total_steps']:,}"
    if summary.get("stopped_by_signal"):
        steps += f" (stopped by {summary.get('signal') or 'a signal'}; how to resume follows)"
    started.add("steps", steps)
    started.add("samples", f"{summary['num_samples_seen']:,} seen; "
                           + skipped_line(summary.get("num_skipped_samples") or {}, summary["num_samples_seen"]))
    if summary.get("num_bad_steps"):
        started.add("non-finite steps", f"{summary['num_bad_steps']} skipped")
    loss = summary.get("final_loss")
    if loss is not None:
        terms = summary.get("final_terms") or {}
        # the overall terms that contributed (per-teacher terms, "fd:NAME", are in metrics.jsonl)
        parts = [f"{k} {v:.4g}" for k, v in terms.items()
                 if isinstance(v, (int, float)) and v and k != "loss" and ":" not in k]
        started.add("final loss", f"{loss:.4g}" + (f" ({', '.join(parts)})" if len(parts) > 1 else ""))
    if summary.get("samples_per_s"):
        started.add("speed", f"{summary['samples_per_s']:,.0f} samples/s")
    started.emit("finished" if summary.get("completed") else "stopped")


def exit_code(summary: dict, command: str, cfg: Config) -> int:
    """0 for a finished run; for one stopped by a signal, say where it stopped and how to resume, and return
    the shell's code for that signal (130 for SIGINT, 143 for SIGTERM and SIGUSR1: see mmkd.utils.signals), so
    `pretrain && distill` stops and a requeued job resumes."""
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
    from mmkd.utils.signals import exit_code as signal_exit_code

    return signal_exit_code(name)
