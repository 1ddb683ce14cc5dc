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
    """Remove what a run writes (config, metrics, summary, TensorBoard event files, step checkpoints) and
    nothing else; returns the relative names removed."""
    removed = []
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
        before, after = _flat(old), _flat(new)
        changes = {k: [before.get(k), v] for k, v in after.items() if k not in _NOT_SETTINGS and before.get(k) != v}
        if changes:
            segments.append({"start_step": int(start_step), "changes": changes})
    atomic_write_text(path, yaml.safe_dump({**new, "segments": segments}, sort_keys=False))
    return changes


def resume_command(command: str, run_dir: Path) -> str:
    return f"mmkd {command} --config {run_dir / CONFIG} --resume latest"
