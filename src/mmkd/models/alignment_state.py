"""The training state of `mmkd align` between a stop and its rerun: a preempted or signalled align continues.

A state folder (`OUT.partial/`, beside the weights) holds the autoencoder's weights, the optimizer's
state and `state.json`: the step, where the current pass stands (the pass's seeded order is drawn again
from the generator state saved at its start, then `offset` rows are skipped), the random generators
(torch's draws the noise and dropout of `--arch authors`) and the settings it was trained with. It is
written under a temporary name and swapped in, so a kill leaves the previous state or the new one. A rerun with other settings
is refused, naming what differs. Nothing here is a pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkd.errors import UsageError
from mmkd.utils.train_state import flatten_optimizer_state, rng_state, set_rng_state, unflatten_optimizer_state

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"


class AlignmentStopped(Exception):
    """A stop signal arrived: the state was written at `step` of `total`."""

    def __init__(self, step: int, total: int, signal_name: str, folder: Path):
        super().__init__(f"stopped by {signal_name} at step {step} of {total}; state in {folder}")
        self.step, self.total, self.signal_name, self.folder = step, total, signal_name, folder


def state_folder(weights: Path) -> Path:
    return weights.with_name(weights.stem + ".partial")


def save_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any],
               settings: dict[str, Any]) -> None:
    from mmkd.utils.io import atomic_save_safetensors, atomic_write_json, fsync_dir

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        atomic_save_safetensors(tmp / MODEL_FILE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        tensors, meta = flatten_optimizer_state(optimizer.state_dict())
        atomic_save_safetensors(tmp / OPTIM_FILE, tensors)
        atomic_write_json(tmp / STATE_FILE, {**progress, "optimizer": meta, "rng": rng_state(),
                                             "settings": settings})
        fsync_dir(tmp)
        old = folder.with_name(f".old-{folder.name}")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved progress ({step, pass_rng, offset}) after loading the weights, optimizer and random generators;
    None when there is no state. Other settings, or a damaged state, are a UsageError naming the folder."""
    from safetensors.torch import load_file


    if not (folder / STATE_FILE).is_file():
        return None
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        saved = state["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{folder}: the state of a stopped `mmkd align` is unreadable ({e}); remove the folder to "
                         f"start over") from None
    differ = [f"{k} {saved.get(k)!r} then, {v!r} now" for k, v in settings.items() if saved.get(k) != v]
    if differ:
        raise UsageError(f"{folder} holds a stopped `mmkd align` with other settings ({'; '.join(differ)}); rerun it "
                         f"with the settings it had to continue, or remove the folder to start over")
    try:
        model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
        optimizer.load_state_dict(unflatten_optimizer_state(load_file(str(folder / OPTIM_FILE)), state["optimizer"]))
    except Exception as e:  # a truncated or forged file: SafetensorError, RuntimeError, OSError
        raise UsageError(f"{folder}: the state of a stopped `mmkd align` is damaged ({type(e).__name__}: "
                         f"{str(e)[:200]}); remove the folder to start over") from None
    set_rng_state(state["rng"])
    return {"step": state["step"], "pass_rng": state["pass_rng"], "offset": state["offset"]}
