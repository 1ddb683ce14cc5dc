"""`mmkd distill`: stage 2, multi-teacher distillation from a feature store."""

from __future__ import annotations

import argparse
import json

ACCEPTS_OVERRIDES = True
DESCRIPTION = """Stage 2: distil the teachers of a feature store into the student.

Starts from a stage-1 checkpoint (--init RUN_OR_CHECKPOINT), reads teacher features from the
store (mmkd extract / import-features), and for each sample picks teachers by a policy
(--distill.policy random-available | mean-available | score-weighted | modality).
Loss = CLIP + lambda_fd * FD + lambda_icl * ICL + lambda_kl * relational KL, per-teacher terms logged.

Target spaces (--distill.target_space): projection (alignment autoencoder; run `mmkd align`
first), adaptor (trainable per-teacher heads), relational (KL only; set --distill.lambda_kl).
FD targets are normalised unless --distill.normalize_targets false (the paper's released code);
the ICL temperature is learnable unless --distill.learnable_icl_temperature false; ICL runs per
teacher over its own rows unless --distill.icl_form paper (one matrix across teachers, as the
authors' code); projection targets pass the alignment's modality MLP unless
--distill.projection linear. --config mmkd_b16/distill-paper sets all of the
authors' choices. Every term is computed over the batch gathered from all processes, so
torchrun with N processes trains as one process with the same global batch.

Example:
  mmkd align --store store/ --student runs/s1
  mmkd distill --data pairs.csv --store store/ --init runs/s1 --out runs/s2 --epochs 2 --lr 1e-4
"""


# Stage 2's own defaults over the dataclass ones (which are stage 1's): the paper's lr, no warm-up.
# model.name "": the student is built from the --init run's own model config (student_from_init).
BASE_DEFAULTS = {"optim.lr": 1e-6, "optim.warmup_steps": 0, "train.out": "runs/distill", "model.name": ""}


def student_from_init(cfg) -> None:
    """Stage 2 starts from a trained student: its architecture is the one `--init` was trained with.

    Without --model the student is built from the init checkpoint's own open_clip_config.json (a run,
    a checkpoint or an export folder); a --model that differs from it is refused, and one that agrees
    (a recipe's `model.name: mmkd-b16`) is built from that config too unless --model.hf_text_path is
    given, so a Hugging Face text tower is found where the run found it. Without --init the
    student starts from random weights, which is almost never meant: warn. A resume of the run's own
    checkpoint takes the student from that checkpoint (`loop.student_of_checkpoint`): --init is not read again.
    """
    import sys
    from pathlib import Path

    from mmkd.errors import UsageError
    from mmkd.models.student import CHECKPOINT_CONFIG
    from mmkd.training.checkpoint import read_train_state
    from mmkd.training.loop import own_resume_checkpoint
    from mmkd.utils.runs import latest_checkpoint

    own = own_resume_checkpoint(cfg)
    if own is not None:  # a resume of this run: its student is the one its checkpoints hold (the --init run may
        # have trained on or been cleaned up since), as the run's config names it
        cfg.model.name = read_train_state(own).get("config", {}).get("model", {}).get("name") or cfg.model.name
        return
    if not cfg.model.init:
        print("mmkd distill: warning: no --init, so the student starts from random weights; stage 2 is meant to "
              "start from a stage-1 run (--init RUN)", file=sys.stderr)
        cfg.model.name = cfg.model.name or "mmkd-tiny-vit"
        return
    init = Path(cfg.model.init)
    folder = init if (init / CHECKPOINT_CONFIG).is_file() else latest_checkpoint(init) if init.is_dir() else None
    if folder is None or not (folder / CHECKPOINT_CONFIG).is_file():
        if not cfg.model.name:
            raise UsageError(f"--init: {cfg.model.init!r} is a weights file without its model config; give the "
                             f"student's architecture with --model (or --init the run / checkpoint folder)")
        return
    if not cfg.model.name:
        cfg.model.name = str(folder)
        return
    conflict = _model_conflict(cfg, folder)
    if conflict:
        raise UsageError(f"--model {cfg.model.name!r} conflicts with the model of --init {cfg.model.init!r} "
                         f"({conflict}); drop --model (distill builds the student from the run's own config) or "
                         f"pass the model the run was trained with")
    if not cfg.model.hf_text_path:  # same architecture; the run's own config also knows where its text tower is
        cfg.model.name = str(folder)


def _model_conflict(cfg, folder) -> str:
    """The first difference between --model's config and the checkpoint's ("" when they agree)."""
    import json

    from mmkd.models.student import CHECKPOINT_CONFIG, resolve_model_config

    saved = json.loads((folder / CHECKPOINT_CONFIG).read_text())["model_cfg"]
    wanted, _ = resolve_model_config(cfg.model.name)
    if cfg.model.context_length:
        wanted.setdefault("text_cfg", {})["context_length"] = cfg.model.context_length
    paths = {"hf_model_name", "hf_tokenizer_name"}  # local folders: where, not what

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            if key in paths:
                continue
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                found = diff(x, y, f"{prefix}{key}.")
                if found:
                    return found
            elif x != y:
                return f"{prefix}{key}: --model has {x!r}, the run {y!r}"
        return ""

    return diff(wanted, saved)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmkd.training.cli_common import add_run_arguments

    add_run_arguments(parser, "distill", base=BASE_DEFAULTS)
    parser.add_argument("--exclude-teacher", action="append", default=[], metavar="NAME",
                        help="leave this teacher out (repeatable): leave-one-teacher-out ablations")


def run(args: argparse.Namespace) -> int:
    from mmkd.training.cli_common import config_from_args, exit_code, print_run_summary
    from mmkd.training.loop import fit
    from mmkd.training.stage2 import DistillTask
    from mmkd.utils.console import Summary

    started = Summary("distill")
    rest = list(getattr(args, "_rest", []))
    if args.exclude_teacher:
        rest += ["--distill.exclude_teachers", ",".join(args.exclude_teacher)]
    cfg = config_from_args(args, rest, stage="distill", base=BASE_DEFAULTS)
    student_from_init(cfg)
    summary = fit(cfg, DistillTask)
    print(json.dumps({k: summary[k] for k in ("num_steps", "num_samples_seen", "num_skipped_samples", "final_loss",
                                              "final_terms", "samples_per_s")}))
    print_run_summary(summary, cfg, started)
    return exit_code(summary, "distill", cfg)
