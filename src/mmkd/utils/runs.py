"""The layout of a run folder, readable without the training code.

    RUN/config.yaml, metrics.jsonl, summary.json
    RUN/checkpoints/step_00000120/{open_clip_config.json, open_clip_model.safetensors,
                                   extra.safetensors, optimizer.safetensors, train_state.json}

A checkpoint folder counts once its `train_state.json` exists (it is written last, and the
folder is renamed into place whole; see mmkd.training.checkpoint).
"""

from __future__ import annotations

from pathlib import Path

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
