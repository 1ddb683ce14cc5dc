"""A run folder's life outside the training steps: starting over an existing run is refused unless
asked for, `--overwrite` removes only mmkd's own files, config.yaml keeps the history of resumes
that changed settings, and a stopped run says how to go on.

config.yaml holds the configuration of the latest segment (usable as `--config`) and
`segments`: one entry per stretch of training with the same settings,
`{start_step, changes: {section.key: [before, after]}}`, the first with no changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mmkd.config import Config, to_dict
from mmkd.errors import UsageError
from mmkd.utils.runs import checkpoint_dir

CONFIG = "config.yaml"
OWNED_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
TENSORBOARD = "tensorboard"
EVAL = "eval"  # `mmkd eval --out RUN/eval`: the results the model card of an export quotes
# Not part of a run's settings: how this process was asked to start.
_NOT_SETTINGS = ("train.resume", "train.overwrite")


def _is_step_dir(p: Path) -> bool:
    name = p.name
    return p.is_dir() and (name.startswith(".tmp-step_") or (name.startswith("step_") and name[5:].isdigit()))


def run_contents(run_dir: Path) -> list[str]:
    """What in `run_dir` shows that a run was written there (relative names)."""
    found = [name for name in OWNED_FILES if (run_dir / name).is_file()]
    if (run_dir / "best" / "best.json").is_file():  # the kept best checkpoint (mmkd.training.validation)
        found.append("best")
    ckpts = checkpoint_dir(run_dir)
    if ckpts.is_dir():
        found += sorted(f"checkpoints/{p.name}" for p in ckpts.iterdir() if _is_step_dir(p))
    return found


def check_out_folder(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Refuse an --out that is a file, or that holds a run while neither --resume nor --overwrite was given."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out: {str(run_dir)!r} is an existing file, not a run folder; give a folder path "
                         f"(it is created)")
    if overwrite and resume:
        raise UsageError(f"--overwrite and --resume {resume}: choose one; --resume continues the run in "
                         f"{str(run_dir)!r}, --overwrite starts it over")
    found = run_contents(run_dir) if run_dir.is_dir() else []
    if found and not resume and not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise UsageError(f"--out: {str(run_dir)!r} already holds a run ({shown}); continue it with --resume latest, "
                         f"start it over with --overwrite (removes only the files mmkd wrote there), or choose a "
                         f"new --out folder")


def remove_owned(run_dir: Path) -> list[str]:
    """Remove what a run writes (config, metrics, summary, TensorBoard event files, step checkpoints) and what
    `mmkd eval`/`report` wrote into RUN/eval (the old model's results would pass for the new one's), and nothing
    else; returns the relative names removed."""
    from mmkd.evaluation.runner import remove_results

    removed = [f"{EVAL}/{name}" for name in remove_results(run_dir / EVAL)]
    for name in run_contents(run_dir):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    tb = run_dir / TENSORBOARD
    if tb.is_dir():
        for p in sorted(tb.glob("events.out.tfevents.*")):
            if p.is_file():
                p.unlink()
                removed.append(f"{TENSORBOARD}/{p.name}")
    for folder in (tb, checkpoint_dir(run_dir)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def _settings(cfg: Config) -> dict[str, Any]:
    d = to_dict(cfg)
    d["train"]["resume"] = ""
    d["train"]["overwrite"] = False
    return d


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in d.items() if isinstance(section, dict) for k, v in section.items()}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    before, after = _flat(old), _flat(new)
    return {k: [before.get(k), v] for k, v in after.items() if k not in _NOT_SETTINGS and before.get(k) != v}


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# What a resume may change to train a finished run further, or that the resume checks with the task built
# (the teachers of another store): such a resume takes the usual path.
_NOT_FINISHED = ("train.epochs", "train.max_steps", "distill.store")


def _whole_safetensors(folder: Path) -> bool:
    """Every .safetensors file in `folder` opens whole (the export's header check)."""
    from mmkd.errors import UsageError
    from mmkd.export.folder import check_safetensors

    try:
        for path in folder.glob("*.safetensors"):
            check_safetensors(path)
    except UsageError:
        return False
    return True


def finished_run(run_dir: Path, cfg: Config, command: str) -> dict[str, Any] | None:
    """`--resume latest` of a run that already finished (a requeued job): says so and returns its summary,
    leaving every file as it was; None when there is something to do. A setting changed on the command line
    is reported as not applied (no step is left to use it), except the number of epochs or steps (more
    training) and the feature store (its teachers are checked against the checkpoint's), which resume as usual."""
    import os
    import sys

    import yaml

    from mmkd.utils.runs import latest_checkpoint

    if cfg.train.resume != "latest" or not run_dir.is_dir():
        return None
    summary = _read_json(run_dir / "summary.json")
    ckpt = latest_checkpoint(run_dir)
    if not summary.get("completed") or summary.get("stopped_by_signal") or ckpt is None \
            or int(ckpt.name.split("_")[1]) != summary.get("num_steps") or not _whole_safetensors(ckpt):
        return None  # a damaged final checkpoint takes the usual resume path, which names an earlier one
    try:
        old = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        old = None
    changes = {}
    if isinstance(old, dict):
        old.pop("segments", None)
        changes = _changes(old, _settings(cfg))
        changes.pop("train.out", None)  # where the run is, not how it trains (a moved run folder)
    if any(k in changes for k in _NOT_FINISHED):
        return None
    if os.environ.get("RANK", "0") == "0":
        print(f"mmkd {command}: {run_dir} is finished (step {summary['num_steps']} of {summary.get('total_steps')}, "
              f"checkpoint {ckpt.name}); --resume latest has nothing to do and changed nothing", file=sys.stderr)
        if changes:
            shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            print(f"mmkd {command}: not applied, no step is left to use them: {shown}. To train with them, raise "
                  f"--epochs or --max-steps, or start a new run from it: --init {ckpt} --out NEW_RUN", file=sys.stderr)
    return {**summary, "already_finished": True}


def write_config(run_dir: Path, cfg: Config, start_step: int) -> dict[str, Any]:
    """Write RUN/config.yaml for a run (re)starting at `start_step`; a resume that changed settings adds a
    segment instead of replacing the history. Returns the segment's changes."""
    import yaml

    from mmkd.utils.io import atomic_write_text

    path = run_dir / CONFIG
    new = _settings(cfg)
    segments: list[dict[str, Any]] = [{"start_step": 0, "changes": {}}]
    changes: dict[str, Any] = {}
    old = None
    if start_step > 0 and path.is_file():
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            old = None
    if isinstance(old, dict):
        kept = old.pop("segments", None)
        if isinstance(kept, list) and kept:
            segments = kept
        changes = _changes(old, new)
        if changes:
            segments.append({"start_step": int(start_step), "changes": changes})
    atomic_write_text(path, yaml.safe_dump({**new, "segments": segments}, sort_keys=False))
    return changes


def resume_command(command: str, run_dir: Path) -> str:
    return f"mmkd {command} --config {run_dir / CONFIG} --resume latest"
