"""Export an mmkd checkpoint as a folder that open_clip loads with its own functions.

    OUT/
        open_clip_config.json         {"model_cfg", "preprocess_cfg"} (open_clip `local-dir:` layout)
        open_clip_model.safetensors   weights, bit-identical to the checkpoint's
        config.json, tokenizer*.json, vocab.txt, ...   HF text towers only: the text model's config
                                      and tokenizer files (open_clip reads the tokenizer from OUT)
        README.md                     model card (mmkd.export.model_card)
        mmkd_export.json              provenance: source checkpoint, sha256 of the weights, library
                                      versions, the parity check, the card's facts as JSON
        onnx/                         with --onnx: image_encoder.onnx, text_encoder.onnx

Loading it:  `open_clip.create_model_and_transforms("local-dir:OUT")` and
`open_clip.get_tokenizer("local-dir:OUT")`.

HF text towers. open_clip builds the text tower with `AutoConfig.from_pretrained(hf_model_name)`,
so `hf_model_name` in the JSON must name something transformers can open without a download.
A static JSON cannot say "this folder", so by default the export writes OUT's absolute path
(the HF config.json is inside OUT): the folder loads offline as written. After moving or
copying it, run `mmkd export --relink NEW_DIR` to rewrite that path. To publish the folder
(e.g. on the Hugging Face Hub), pass `--hf-model-name org/model` (a hub id whose config is the
same architecture): it then loads anywhere that can fetch or has cached that config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkd.errors import UsageError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MANIFEST_FILE = "mmkd_export.json"
CARD_FILE = "README.md"
# Files of a HF text model folder that open_clip needs at load time (config + tokenizer), never its weights.
HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
            "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class SourceCheckpoint:
    """Where an export comes from: the checkpoint folder and, when known, its run directory."""

    checkpoint: Path
    run_dir: Path | None
    train_state: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoint(path: str | Path) -> SourceCheckpoint:
    """A checkpoint folder (`.../step_XXXXXXXX`, or any folder with open_clip_config.json) or a run
    directory (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():  # checked before importing torch, so the message comes fast
        raise UsageError(f"--checkpoint: {str(path)!r} does not exist; give a run directory or a checkpoint folder "
                         f"(RUN/checkpoints/step_XXXXXXXX)")
    from mmkd.utils.runs import STATE_FILE, latest_checkpoint

    ckpt: Path | None
    if (path / CONFIG_FILE).is_file():
        ckpt = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    elif path.is_dir() and (ckpt := latest_checkpoint(path)) is not None:
        run_dir = path
    else:
        raise UsageError(f"--checkpoint: {str(path)!r} is neither a checkpoint folder (with {CONFIG_FILE}) nor a run "
                         f"directory with checkpoints/step_*; train one with `mmkd pretrain` first")
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise UsageError(f"--checkpoint: {ckpt} has no {WEIGHTS_FILE}; is the checkpoint complete?")
    check_safetensors(ckpt / WEIGHTS_FILE)
    state = {}
    if (ckpt / STATE_FILE).is_file():
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--checkpoint: {ckpt / STATE_FILE} is unreadable ({e}); export another checkpoint "
                             f"(RUN/checkpoints/step_*)") from None
        if not isinstance(state, dict):
            raise UsageError(f"--checkpoint: {ckpt / STATE_FILE} is not a train state; export another checkpoint")
        state.pop("rng", None)
        state.pop("optimizer", None)
    return SourceCheckpoint(ckpt, run_dir, state)


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or forged safetensors file before anything is written: its header must parse and
    every tensor must lie inside the file (safetensors checks both when opening)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"--checkpoint: {path} is not a readable safetensors file ({e}); the file may be truncated "
                         f"or forged. Export another checkpoint (RUN/checkpoints/step_*)") from None


class ExportWriteError(UsageError):
    """The export folder could not be written (disk full, quota, read-only); nothing partial is left."""

    exit_code = 1


def is_hf_text(model_cfg: dict[str, Any]) -> bool:
    return "hf_model_name" in model_cfg.get("text_cfg", {})


def find_hf_folder(source: SourceCheckpoint, model_cfg: dict[str, Any], hf_text_path: str = "") -> Path:
    """The folder with the HF text model's config.json and tokenizer: --hf-text-path, the checkpoint
    itself (every training checkpoint carries them: `loop.hf_text_files`), or the folder named in the
    model config."""
    candidates = [Path(hf_text_path)] if hf_text_path else []
    candidates += [source.checkpoint, Path(model_cfg["text_cfg"].get("hf_model_name") or "")]
    for folder in candidates:
        if str(folder) and (folder / "config.json").is_file():
            return folder
    raise UsageError(
        f"--hf-text-path: the text tower is a Hugging Face model ({model_cfg['text_cfg'].get('hf_model_name')!r}) but "
        f"neither the checkpoint nor that path holds its config.json; pass the local model folder with --hf-text-path DIR"
    )


def _copy_hf_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in HF_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                                      "sentencepiece.bpe.model")):
        raise UsageError(f"--hf-text-path: {src} has a config.json but no tokenizer files (tokenizer.json, vocab.txt, "
                         f"...); save the tokenizer there with `tokenizer.save_pretrained(DIR)`")
    return copied


def set_hf_reference(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Point the text tower's `hf_model_name`/`hf_tokenizer_name` at `name` (a folder or hub id)."""
    text = config["model_cfg"]["text_cfg"]
    text["hf_model_name"] = name
    text["hf_tokenizer_name"] = name
    return config


def relink(folder: str | Path) -> Path:
    """After moving an exported folder: rewrite its HF text-tower reference to its current absolute path."""
    from mmkd.utils.io import atomic_write_json

    folder = Path(folder).resolve()
    if not (folder / CONFIG_FILE).is_file():
        raise UsageError(f"--relink: {folder} has no {CONFIG_FILE}; give a folder written by `mmkd export`")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if not is_hf_text(config["model_cfg"]):
        return folder  # open_clip text towers carry no path
    if not (folder / "config.json").is_file():
        raise UsageError(f"--relink: {folder} has no HF config.json; it was exported with a hub id, nothing to relink")
    atomic_write_json(folder / CONFIG_FILE, set_hf_reference(config, str(folder)))
    return folder


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty --out unless --overwrite and it is an earlier export."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {str(out)!r} is an existing file, not a folder; give a new folder path")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UsageError(f"--out: {out} exists and is not empty; choose a new folder or pass --overwrite")
        if not (out / MANIFEST_FILE).is_file():
            raise UsageError(f"--out: {out} is not an earlier `mmkd export` folder (no {MANIFEST_FILE}); refusing to "
                             f"replace it even with --overwrite; choose a new folder")


def write_export(source: SourceCheckpoint, out: str | Path, hf_text_path: str = "", hf_model_name: str = "",
                 overwrite: bool = False, card_text: str = "", manifest: dict[str, Any] | None = None) -> Path:
    """Write the folder (see module doc) atomically: built under a temporary name, then renamed to `out`.

    Returns the absolute path of `out`. The weights file is copied, so it is bit-identical to the checkpoint's.
    """
    from mmkd.utils.io import apply_dir_umask

    out = Path(out).resolve()
    check_out(out, overwrite)
    try:
        config = json.loads((source.checkpoint / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--checkpoint: {source.checkpoint / CONFIG_FILE} is unreadable ({e})") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise UsageError(f"--checkpoint: {source.checkpoint / CONFIG_FILE} has no 'model_cfg'; not an mmkd checkpoint")
    tmp = out.parent / ".tmp-not-created"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
        apply_dir_umask(tmp)
        _write_into(tmp, out, source, config, hf_text_path, hf_model_name, card_text, manifest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportWriteError(f"--out: could not write the export {out}: {e.strerror or e}"
                               f"{f' ({Path(e.filename).name})' if e.filename else ''}; nothing partial was left "
                               f"behind. Free space (or fix the folder's permissions) and rerun") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_into(tmp: Path, out: Path, source: SourceCheckpoint, config: dict[str, Any], hf_text_path: str,
                hf_model_name: str, card_text: str, manifest: dict[str, Any] | None) -> None:
    from mmkd.utils.io import atomic_write_json, atomic_write_text, fsync_dir

    shutil.copyfile(source.checkpoint / WEIGHTS_FILE, tmp / WEIGHTS_FILE)  # new file: its mode follows the umask
    with open(tmp / WEIGHTS_FILE, "rb+") as f:  # the rename below must not publish unflushed weights
        os.fsync(f.fileno())
    hf_files: list[str] = []
    if is_hf_text(config["model_cfg"]):
        hf_files = _copy_hf_files(find_hf_folder(source, config["model_cfg"], hf_text_path), tmp)
        set_hf_reference(config, hf_model_name or str(out))
    atomic_write_json(tmp / CONFIG_FILE, config)
    if card_text:
        atomic_write_text(tmp / CARD_FILE, card_text)
    atomic_write_json(tmp / MANIFEST_FILE, {**(manifest or {}), "hf_files": hf_files})
    fsync_dir(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    fsync_dir(out.parent)


def update_manifest(out: Path, **entries: Any) -> None:
    from mmkd.utils.io import atomic_write_json

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest.update(entries)
    atomic_write_json(out / MANIFEST_FILE, manifest)
