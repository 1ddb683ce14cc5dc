"""open_clip teachers: `local-dir:PATH`, `hf-hub:ORG/NAME` and `ARCH@WEIGHTS_FILE`.

- `local-dir:PATH`: a folder with `open_clip_config.json` (model_cfg + preprocess_cfg) and a
  weights file (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, ...).
- `hf-hub:ORG/NAME`: a Hub repo in that layout, taken from the local Hugging Face cache
  (downloaded only when online and not cached), then loaded like `local-dir:`.
- `ARCH@WEIGHTS_FILE`: an open_clip built-in architecture (`ViT-B-16`, see
  `open_clip.list_models()`) plus a weights file; the architecture's default preprocessing.

Weights are read with safetensors or `torch.load(weights_only=True)`; a folder without
weights is refused (open_clip itself would only warn and return a random model).
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any

from mmkd.errors import UsageError
from mmkd.models.adapter import OpenClipEncoder
from mmkd.teachers.provenance import hash_weights, jsonable, library_versions, weight_files

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def _quiet():
    """open_clip logs warnings through the root logger; keep the CLI output readable."""
    return contextlib.redirect_stderr(io.StringIO())


def _provenance(spec: str, loader: str, model, weights: dict[str, str], tokenizer) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    return {
        "spec": spec,
        "loader": loader,
        "weights": weights,
        "preprocess": jsonable(get_model_preprocess_cfg(model)),
        "tokenizer": {"class": type(tokenizer).__name__,
                      "context_length": int(getattr(tokenizer, "context_length", 0) or 0)},
        "versions": library_versions("open_clip_torch"),
    }


def load_open_clip_dir(folder: str | Path, spec: str, device: str = "cpu", name: str | None = None,
                       loader: str = "open_clip:local-dir") -> OpenClipEncoder:
    import open_clip

    folder = Path(folder)
    if not (folder / "open_clip_config.json").is_file():
        raise UsageError(f"--teacher: {spec!r}: {folder} has no open_clip_config.json; an open_clip folder holds "
                         f"open_clip_config.json and a weights file (open_clip_model.safetensors)")
    files = weight_files(folder)
    if not files:
        raise UsageError(f"--teacher: {spec!r}: no weights file (.safetensors/.bin/.pth) in {folder}; "
                         f"copy the teacher's weights there")
    chosen = Path(open_clip.factory._find_checkpoint_in_dir(folder))
    model_id = f"local-dir:{folder}"
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_id, weights_only=True)
        cfg = open_clip.get_model_config(model_id) or {}
        hf_tok = cfg.get("text_cfg", {}).get("hf_tokenizer_name", "")
        if hf_tok and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            context = cfg.get("text_cfg", {}).get("context_length", 77)
            tokenizer = open_clip.tokenizer.HFTokenizer(hf_tok, context_length=context)
        else:
            tokenizer = open_clip.get_tokenizer(model_id)
    except pickle.UnpicklingError as e:  # a .bin/.pth that is not plain tensors: refused, never retried unsafely
        raise UsageError(f"--teacher: {spec!r}: open_clip could not load {chosen}: refused to load it, it is not a "
                         f"plain tensor checkpoint ({str(e).splitlines()[-3 if len(str(e).splitlines()) > 3 else 0][:200]}). "
                         f"mmkd opens .pt/.bin files with weights_only=True only; convert trusted files to "
                         f"safetensors") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise UsageError(f"--teacher: {spec!r}: open_clip could not load {folder} ({str(e)[:300]})") from None
    finally:
        logging.getLogger().setLevel(previous)
    provenance = _provenance(spec, loader, model, hash_weights([chosen]), tokenizer)
    return OpenClipEncoder(model, preprocess, tokenizer, name=name or folder.name, provenance=provenance,
                           device=device)


def load_open_clip_arch(arch: str, weights_file: str, spec: str, device: str = "cpu",
                        name: str | None = None) -> OpenClipEncoder:
    import open_clip

    from mmkd.models.weights import WeightsMismatchError, load_weights_into

    if open_clip.get_model_config(arch) is None:
        raise UsageError(f"--teacher: {spec!r}: {arch!r} is not an open_clip architecture; "
                         f"see `python -c 'import open_clip; print(open_clip.list_models())'`")
    if not Path(weights_file).is_file():
        raise UsageError(f"--teacher: {spec!r}: weights file {weights_file!r} does not exist")
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch)
        tokenizer = open_clip.get_tokenizer(arch)
    finally:
        logging.getLogger().setLevel(previous)
    try:
        info = load_weights_into(model, weights_file, strict=True, option="--teacher")
    except WeightsMismatchError as e:  # the weights belong to another architecture
        raise UsageError(f"--teacher: {spec!r}: the weights do not fit architecture {arch!r}: {e.details}; "
                         f"check the architecture name") from None
    provenance = _provenance(spec, "open_clip:arch", model, {Path(info["path"]).name: info["sha256"]}, tokenizer)
    return OpenClipEncoder(model, preprocess, tokenizer, name=name or arch, provenance=provenance, device=device)


def load_open_clip_hub(repo_id: str, spec: str, device: str = "cpu", name: str | None = None,
                       how_to_get: str = "") -> OpenClipEncoder:
    from mmkd.teachers.hub import resolve_hub_repo

    folder = resolve_hub_repo(repo_id, how_to_get=how_to_get)
    return load_open_clip_dir(folder, spec, device=device, name=name or repo_id.split("/")[-1],
                              loader="open_clip:hf-hub")
