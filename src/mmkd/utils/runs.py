"""The layout of a run folder, readable without the training code.

    RUN/config.yaml, metrics.jsonl, summary.json
    RUN/checkpoints/step_00000120/{open_clip_config.json, open_clip_model.safetensors,
                                   extra.safetensors, optimizer.safetensors, train_state.json}

A checkpoint folder counts once its `train_state.json` exists (it is written last, and the
folder is renamed into place whole; see mmkd.training.checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

STATE_FILE = "train_state.json"
MODEL_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
OPTIM_FILE = "optimizer.safetensors"
EXTRA_FILE = "extra.safetensors"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def is_own_checkpoint(ckpt: str | Path, run_dir: str | Path) -> bool:
    """Is `ckpt` one of the checkpoint folders of the run in `run_dir`?"""
    return Path(ckpt).resolve().parent.parent == Path(run_dir).resolve()


def require_weights(folder: str | Path, option: str = "--model") -> Path:
    """The weights file of a checkpoint folder, export folder or run directory (its latest checkpoint).

    A folder that has a model config but no weights mmkd can load is refused (UsageError): building the
    model from its config alone would silently give random weights."""
    from mmkd.errors import UsageError

    folder = Path(folder)
    ckpt = folder if (folder / CONFIG_FILE).is_file() else latest_checkpoint(folder)
    if ckpt is None:
        raise UsageError(f"{option}: {str(folder)!r} holds no checkpoint (no {CONFIG_FILE} and no "
                         f"checkpoints/step_*); give a run folder, a checkpoint folder or an export")
    if (ckpt / MODEL_FILE).is_file():
        return ckpt / MODEL_FILE
    others = sorted(p.name for p in ckpt.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    found = (f" (it has {', '.join(others)}: open such a file as `local-dir:{ckpt}` or with --init, where it is "
             f"read with weights_only=True)" if others else "")
    raise UsageError(f"{option}: {str(ckpt)!r} has a model config but no weights file {MODEL_FILE}{found}; "
                     f"refusing to use randomly initialised weights. Point {option} at a complete checkpoint "
                     f"(RUN/checkpoints/step_*) or export")


def read_newest_checkpoint(folder: str | Path, read: Callable[[Path], T], option: str = "--model",
                           attempts: int = 5) -> T:
    """`read(checkpoint folder)` for the checkpoint `require_weights` picks in `folder`.

    A run that is still training keeps only its newest checkpoints and removes older ones as it saves
    (`mmkd.training.checkpoint.save_checkpoint`, `keep`), so the newest one can go while it is read.
    Given a run folder, the read then starts again from the run's newest checkpoint (up to `attempts`
    times); given a checkpoint folder that goes, the error names the run folder to give instead."""
    from mmkd.errors import UsageError

    folder = Path(folder)
    for _ in range(attempts):
        ckpt = require_weights(folder, option).parent
        try:
            return read(ckpt)
        except Exception:  # a missing file, or a folder no longer a checkpoint, depending on when it went
            if ckpt.is_dir():
                raise  # not removed by a run's pruning: a real error
            if ckpt == folder:
                raise UsageError(f"{option}: the checkpoint {str(ckpt)!r} was removed while it was read (the run "
                                 f"still training keeps only its newest checkpoints); give the run folder "
                                 f"{str(ckpt.parent.parent)!r} to read its newest (if you gave that folder, run "
                                 f"the command again: it picks the newest anew)") from None
    raise UsageError(f"{option}: {str(folder)!r} is still training and removed each of {attempts} newest "
                     f"checkpoints while it was read; try again, or copy a checkpoint folder out of it first")
