"""Loading weights safely: safetensors, or `.pt`/`.bin` with `torch.load(weights_only=True)` only.

`read_state_dict` unwraps the containers training scripts save (`{"state_dict": ...}`,
`{"model": ...}`) and the DistributedDataParallel / torch.compile prefixes (`module.`,
`_orig_mod.`). `load_weights_into` loads a whole model strictly; checkpoints in a known foreign
layout are renamed through an explicit key map first (`KEY_MAPS`), and a checkpoint of another
architecture is refused with the mismatching tensors named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmkd.errors import UsageError

WEIGHTS_FILE = "open_clip_model.safetensors"
# Weight files an open_clip folder or Hub repo may hold, preferred first (open_clip's own order).
OPEN_CLIP_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CONTAINER_KEYS = ("state_dict", "model")


class WeightsMismatchError(UsageError):
    """The weights belong to another architecture; `details` names the mismatching tensors."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Foreign layouts of a whole student, renamed into open_clip's CustomTextCLIP names. The MMKD-CLIP
# authors' student (MMKD_B16.pth) and UniMed-CLIP use their open_clip fork's CLIP class, whose HF text
# tower is `text_encoder` (open_clip 3.x: `text`); the image tower and logit_scale keep their names.
# Source: wangshansong1/MMKD-CLIP@127544c src/open_clip/model.py (CLIP.__init__, self.text_encoder).
KEY_MAPS: dict[str, dict[str, str]] = {
    "mmkd-clip-authors": {"text_encoder.": "text."},
}


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def find_weights(path: str | Path, option: str = "--init") -> Path:
    """The weights file of a checkpoint folder, a run directory (its latest checkpoint) or a file.

    A folder holding several weights files and none of the names above is refused: which one was meant
    cannot be known."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in OPEN_CLIP_WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        from mmkd.utils.runs import latest_checkpoint

        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            return ckpt / WEIGHTS_FILE
        candidates = sorted(path.glob("*.safetensors"))
        others = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(others) > 1 and candidates:
            raise UsageError(f"{option}: {str(path)!r} holds {len(others)} weights files ({', '.join(others)}); "
                             f"name the one to load, e.g. {option} {path / others[0]}")
        if candidates:
            return candidates[0]
    raise UsageError(f"{option}: no weights found at {str(path)!r}; give a .safetensors/.pt/.bin file, "
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
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a (possibly nested) training container, without DDP/compile prefixes."""
    for _ in range(3):  # {"state_dict": {...}}, {"model": {...}}, or both nested
        key = next((k for k in _CONTAINER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if key is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = obj[key]
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a dict of tensors, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def apply_key_map(state: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a foreign layout listed in KEY_MAPS when that makes more of its keys fit the model.

    Returns the (possibly renamed) state and the layout's name ("" when no map applied).
    """
    best, best_name, best_hits = state, "", len(model_keys & state.keys())
    for name, mapping in KEY_MAPS.items():
        renamed = {}
        for k, v in state.items():
            for old, new in mapping.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            renamed[k] = v
        hits = len(model_keys & renamed.keys())
        if hits > best_hits:
            best, best_name, best_hits = renamed, name, hits
    return best, best_name


def _not_weights(key: str) -> bool:
    # position_ids buffers differ between transformers versions; they are not weights.
    return key.endswith("position_ids")


def load_weights_into(model: torch.nn.Module, path: str | Path, strict: bool = True,
                      option: str = "--init") -> dict[str, Any]:
    """Load weights into `model`; a mismatch names the missing, unexpected and wrongly shaped tensors."""
    from mmkd.utils.io import sha256_file

    file = find_weights(path)
    own = {k: v for k, v in model.state_dict().items() if not _not_weights(k)}
    state, layout = apply_key_map(read_state_dict(file), set(own))
    state = {k: v for k, v in state.items() if not _not_weights(k)}
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        details = _mismatch_details(len(own), mismatched, missing, unexpected)
        raise WeightsMismatchError(f"{option}: {file} does not fit the model: {details}. Fix: {_fix(file)}", details)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    info = {"path": str(file), "sha256": sha256_file(file)}
    if layout:
        info["layout"] = layout
    return info


def _mismatch_details(num_own: int, mismatched: list[str], missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) have another shape (checkpoint vs model): "
                     + "; ".join(mismatched[:4]) + ("; ..." if len(mismatched) > 4 else ""))
    if missing:
        parts.append(f"{len(missing)} of the model's {num_own} tensors are missing: {missing[:4]}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) are not in the model: {unexpected[:4]}")
    return "; ".join(parts)


def _fix(file: Path) -> str:
    saved = _saved_model_name(file)
    return ("the checkpoint belongs to another architecture: pass the --model it was trained with"
            + (f" ({saved!r})" if saved else "") + ", or, to start only the image tower from it, "
            "--model.image_init FILE (e.g. a MetaCLIP/open_clip CLIP checkpoint)")


def _saved_model_name(file: Path) -> str:
    """The --model a mmkd checkpoint was trained with, read from its run's config.yaml ("" when unknown)."""
    import yaml

    for folder in (file.parent, *file.parents[:3]):
        cfg = folder / "config.yaml"
        if cfg.is_file():
            try:
                return str((yaml.safe_load(cfg.read_text()) or {}).get("model", {}).get("name") or "")
            except (yaml.YAMLError, AttributeError, OSError):
                return ""
    return ""
