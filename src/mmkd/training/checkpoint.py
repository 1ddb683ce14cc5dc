"""Checkpoints: a folder per step, written whole under a temporary name and renamed into place.

    RUN/checkpoints/step_00000120/
        open_clip_config.json         model + preprocess config (open_clip `local-dir:` layout)
        open_clip_model.safetensors   student weights
        extra.safetensors             other trainable modules (e.g. distillation heads), optional
        optimizer.safetensors         optimiser tensors; param groups in train_state.json
        train_state.json              step, data position, scheduler, counters, RNG states, config

The rename of the folder is the commit: a crash leaves at most a `.tmp-*` folder, which
`latest_checkpoint` never picks and the next save removes. Nothing here is a pickle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmkd.errors import UsageError
from mmkd.utils.io import apply_dir_umask, atomic_write_json, fsync_dir, read_json
from mmkd.utils.train_state import flatten_optimizer_state, rng_state, set_rng_state, unflatten_optimizer_state
from mmkd.utils.runs import (CONFIG_FILE, EXTRA_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE,  # noqa: F401
                             checkpoint_dir, latest_checkpoint, list_checkpoints)


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (disk full, quota, read-only folder); the previous one is intact."""

    exit_code = 1


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, open_clip_config: dict,
                    optimizer: torch.optim.Optimizer | None, train_state: dict[str, Any],
                    extra_modules: dict[str, torch.nn.Module] | None = None, keep: int = 2,
                    tokenizer_dir: str | None = None) -> Path:
    """Write a checkpoint folder atomically and prune old ones (keeping `keep`)."""
    from mmkd.utils.io import atomic_save_safetensors

    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / ".tmp-not-created"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:08d}-", dir=root))
        apply_dir_umask(tmp)
        atomic_save_safetensors(tmp / MODEL_FILE, _unshared(model.state_dict()))
        atomic_write_json(tmp / CONFIG_FILE, open_clip_config)
        if extra_modules:
            extra = {f"{name}.{k}": v for name, m in extra_modules.items() for k, v in m.state_dict().items()}
            if extra:
                atomic_save_safetensors(tmp / EXTRA_FILE, extra)
        state = dict(train_state)
        state["step"] = step
        state["rng"] = rng_state()
        if optimizer is not None:
            tensors, meta = flatten_optimizer_state(optimizer.state_dict())
            atomic_save_safetensors(tmp / OPTIM_FILE, tensors)
            state["optimizer"] = meta
        if tokenizer_dir:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("vocab.txt", "special_tokens_map.json",
                                                                                  "config.json", "merges.txt", "vocab.json")):
                    shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / STATE_FILE, state)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = (f"the previous checkpoint {previous} is intact and `--resume latest` continues from it"
                if previous is not None else "no earlier checkpoint exists")
        raise CheckpointWriteError(
            f"could not write checkpoint {final.name} in {root}: {e.strerror or e} "
            f"({Path(e.filename).name if e.filename else 'while writing'}); nothing partial was kept, {kept}. "
            f"Free space (or fix the folder's permissions) and resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; give each its own storage."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state_dict.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen and ptr != -1 else v
        seen.setdefault(ptr, k)
    return out


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def checkpoint_is_finite(ckpt: str | Path) -> bool:
    """Whether a checkpoint's student weights are all finite (False also when they cannot be read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return not nonfinite_tensors(load_file(str(Path(ckpt) / MODEL_FILE)))
    except (SafetensorError, OSError, ValueError):
        return False


def last_finite_checkpoint(run_dir: str | Path, before: Path | None = None) -> Path | None:
    """The newest complete checkpoint of `run_dir` (older than `before`, when given) with finite weights."""
    ckpts = list_checkpoints(run_dir)
    if before is not None:
        ckpts = [c for c in ckpts if int(c.name.split("_")[1]) < int(before.name.split("_")[1])]
    return next((c for c in reversed(ckpts) if checkpoint_is_finite(c)), None)


def read_train_state(ckpt: str | Path) -> dict[str, Any]:
    """The train_state.json of a checkpoint folder (config, counters, RNG); a damaged one is a UsageError."""
    try:
        return read_json(Path(ckpt) / STATE_FILE)
    except (OSError, ValueError) as e:
        raise UsageError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({e}); resume from an earlier "
                         f"checkpoint with --resume RUN/checkpoints/step_*") from None


def load_checkpoint(ckpt: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    extra_modules: dict[str, torch.nn.Module] | None = None,
                    restore_rng: bool = False) -> dict[str, Any]:
    """Load what is given from a checkpoint folder; returns its train_state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as _load_file

    def load_file(file: str) -> dict[str, torch.Tensor]:
        try:
            return _load_file(file)
        except (SafetensorError, OSError) as e:
            raise UsageError(f"checkpoint {ckpt}: {Path(file).name} is unreadable ({e}); it was damaged after it "
                             f"was written. Resume from an earlier checkpoint with --resume RUN/checkpoints/step_*"
                             ) from None

    ckpt = Path(ckpt)
    state = read_train_state(ckpt)
    if model is not None:
        model.load_state_dict(load_file(str(ckpt / MODEL_FILE)), strict=True)
    if extra_modules and (ckpt / EXTRA_FILE).is_file():
        extra = load_file(str(ckpt / EXTRA_FILE))
        for name, m in extra_modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}, strict=True)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(unflatten_optimizer_state(load_file(str(ckpt / OPTIM_FILE)), state["optimizer"]))
    if restore_rng:
        set_rng_state(state["rng"])
    return state
