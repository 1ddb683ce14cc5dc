"""Loading weights safely: safetensors, or `.pt`/`.bin` with `torch.load(weights_only=True)` only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmkd.errors import UsageError

WEIGHTS_FILE = "open_clip_model.safetensors"


def find_weights(path: str | Path) -> Path:
    """The weights file of a checkpoint folder, a run directory (its latest checkpoint) or a file."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return path / WEIGHTS_FILE
        from mmkd.utils.runs import latest_checkpoint

        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            return ckpt / WEIGHTS_FILE
        candidates = sorted(path.glob("*.safetensors"))
        if candidates:
            return candidates[0]
    raise UsageError(f"--init: no weights found at {str(path)!r}; give a .safetensors/.pt/.bin file, "
                     f"a checkpoint folder or a run directory")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict. Pickled files are opened with weights_only=True; code never runs."""
    path = find_weights(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable safetensors file ({e}); the file may be truncated or forged") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: refuse, never fall back to weights_only=False
        raise UsageError(
            f"{path}: refused to load: it is not a plain tensor checkpoint ({type(e).__name__}: {str(e)[:200]}). "
            f"mmkd opens .pt/.bin files with weights_only=True only; convert trusted files to safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_weights_into(model: torch.nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load weights into `model`; a mismatch names the missing and unexpected keys."""
    from mmkd.utils.io import sha256_file

    file = find_weights(path)
    state = read_state_dict(file)
    own = model.state_dict()
    other = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if other:  # load_state_dict would end in a RuntimeError listing every one of them
        k = other[0]
        raise UsageError(f"--init: {file} does not match the model: {len(other)} tensor(s) have another shape, e.g. "
                         f"{k} is {list(state[k].shape)} in the file and {list(own[k].shape)} in the model; check "
                         f"--model matches the checkpoint's architecture")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids buffers differ between transformers versions; they are not weights.
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if strict and (missing or unexpected):
        raise UsageError(
            f"--init: {file} does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}; check --model matches the checkpoint"
        )
    return {"path": str(file), "sha256": sha256_file(file)}
