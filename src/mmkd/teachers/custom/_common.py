"""Shared pieces of the three hand-built teachers (PMC-CLIP, MedCLIP, UniMed-CLIP).

Legend: B batch, L tokens, D embedding dim.

- `parse_spec("DIR?tokenizer=TDIR&weights=FILE")` -> (folder, options): the part after `?` is a
  query string of per-teacher options (each adapter documents which ones it reads).
- `read_published_checkpoint(file, teacher)` opens a released `.pt`/`.bin` with
  `torch.load(weights_only=True)` only, unwraps the training container (`{"state_dict": ...}`)
  and the DistributedDataParallel `module.` prefix, and turns every way a file can be unusable
  (truncated, not a checkpoint, refused pickle) into a `UsageError` that names the file.
- `load_strict(model, state, ...)` loads a state dict with no missing, unexpected or
  wrongly-shaped key; on a mismatch the `UsageError` lists the keys.
- `TeacherEncoder` puts a model with `encode_image(pixels_B3HW)` / `encode_text(ids_BL)` behind
  the `ClipEncoder` protocol (L2-normalised float32 outputs, no gradients).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

import torch
import torch.nn.functional as F

from mmkd.errors import UsageError

# Buffers that older/newer library versions save or not; they are recomputed from the config,
# so their presence or absence in a released file is not a mismatch.
DERIVED_BUFFER_SUFFIXES = ("position_ids", "relative_position_index", "token_type_ids")
MAX_KEYS_SHOWN = 12


def parse_spec(path: str, allowed: Iterable[str], teacher: str) -> tuple[Path, dict[str, str]]:
    """Split `DIR?key=value&key=value` into the folder and its options; unknown options are an error."""
    folder, _, query = str(path).partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    allowed = tuple(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UsageError(f"{teacher}: unknown option(s) {unknown} in spec {path!r}; "
                         f"allowed: {', '.join(allowed) or 'none'} (e.g. {teacher}:DIR?tokenizer=TEXT_DIR)")
    folder_path = Path(folder).expanduser()
    if not folder_path.is_dir():
        raise UsageError(f"{teacher}: {folder!r} is not a folder; give the folder holding the released "
                         f"checkpoint and the text model (see `mmkd teachers` for the expected layout)")
    return folder_path, options


def find_file(folder: Path, option: str | None, names: tuple[str, ...], suffixes: tuple[str, ...],
              teacher: str, what: str) -> Path:
    """The checkpoint file: `?weights=` if given, else the first of `names`, else the only file with a suffix."""
    if option:
        path = Path(option).expanduser()
        path = path if path.is_absolute() or path.exists() else folder / option
        if not path.is_file():
            raise UsageError(f"{teacher}: weights={option!r} is not a file")
        return path
    for name in names:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise UsageError(f"{teacher}: no {what} in {str(folder)!r} (looked for {', '.join(names)}; "
                     f"{'/'.join(suffixes)} files found: {found}); put it there or pass ?weights=FILE")


def find_text_folder(folder: Path, option: str | None, teacher: str, hf_name: str) -> Path:
    """The Hugging Face folder of the text model (its config.json and tokenizer files)."""
    text_dir = Path(option).expanduser() if option else folder / "text"
    if option and not text_dir.is_absolute() and not text_dir.exists():
        text_dir = folder / option
    if not (text_dir / "config.json").is_file():
        raise UsageError(
            f"{teacher}: the text model folder {str(text_dir)!r} has no config.json; download it once with "
            f"`huggingface-cli download {hf_name} --local-dir {folder / 'text'}` or pass ?tokenizer=DIR"
        )
    return text_dir


def read_published_checkpoint(path: Path, teacher: str) -> dict[str, torch.Tensor]:
    """Flat name -> tensor dict of a released checkpoint, opened with weights_only=True only."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # never fall back to weights_only=False
        text = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if _looks_truncated(e):
            raise UsageError(f"{teacher}: {path} is truncated or corrupt ({text}); download it again "
                             f"(compare its size/sha256 with the published file)") from None
        raise UsageError(f"{teacher}: refused to load {path}: it is not a plain tensor checkpoint ({text}). "
                         f"mmkd opens .pt/.bin files with weights_only=True only") from None
    for container_key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(container_key), dict):
            obj = obj[container_key]
            break
    if not isinstance(obj, dict) or not obj:
        raise UsageError(f"{teacher}: {path} holds {type(obj).__name__}, not a dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise UsageError(f"{teacher}: {path} holds no tensors (keys: {list(obj)[:MAX_KEYS_SHOWN]})")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _looks_truncated(e: Exception) -> bool:
    if isinstance(e, EOFError):
        return True
    message = str(e).lower()
    return any(s in message for s in ("central directory", "zip archive", "unexpected eof", "ran out of input",
                                      "failed reading", "file size", "invalid header", "truncated"))


def _is_derived(key: str) -> bool:
    return key.endswith(DERIVED_BUFFER_SUFFIXES)


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], teacher: str, file: Path,
                hint: str = "") -> None:
    """Load `state` into `model`: every key present, none extra, every shape equal, else a UsageError.

    Derived buffers (position ids, relative position indices) are ignored in both directions:
    library versions differ in whether they save them, and they are recomputed from the config.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _is_derived(k)]
    unexpected = [k for k in state if k not in expected and not _is_derived(k)]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_show(unexpected)}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} key(s) with the wrong shape: {_show(wrong_shape)}")
        raise UsageError(f"{teacher}: {file} does not match the {teacher} architecture: " + "; ".join(parts)
                         + (f". {hint}" if hint else ""))
    loadable = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(loadable, strict=False)


def _show(keys: list[str]) -> str:
    """The first keys, plus how many fall under each top-level module when there are many."""
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    text = f"[{shown}{', ...' if len(keys) > MAX_KEYS_SHOWN else ''}]"
    if len(keys) > MAX_KEYS_SHOWN:
        groups: dict[str, int] = {}
        for key in keys:
            group = key.split(":")[0].split(".")[0]
            groups[group] = groups.get(group, 0) + 1
        text += " (by module: " + ", ".join(f"{g}.*: {n}" for g, n in groups.items()) + ")"
    return text


def read_json_option(folder: Path, option: str | None, default_name: str, teacher: str) -> dict[str, Any] | None:
    """An optional architecture JSON: `?config=FILE`, else `folder/default_name` if present, else None."""
    path = Path(option).expanduser() if option else folder / default_name
    if option and not path.is_absolute() and not path.exists():
        path = folder / option
    if not path.is_file():
        if option:
            raise UsageError(f"{teacher}: config={option!r} is not a file")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{teacher}: {path} is not valid JSON ({e})") from None


def load_bert_config(text_dir: Path, teacher: str):
    """The BertConfig of the text tower, read from the text model folder's config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
    except Exception as e:
        raise UsageError(f"{teacher}: cannot read {text_dir / 'config.json'} ({type(e).__name__}: {e})") from None
    if getattr(config, "model_type", "") != "bert":
        raise UsageError(f"{teacher}: {text_dir} holds a {config.model_type!r} model; the {teacher} text tower is "
                         f"a BERT (config.json with \"model_type\": \"bert\")")
    return config


class BertIdsTokenizer:
    """`tokenizer(texts) -> ids_BL` (LongTensor) with a Hugging Face tokenizer from a local folder.

    padding="max_length" pads every text to `context_length` (PMC-CLIP's training code);
    padding="longest" pads to the longest text of the batch (MedCLIP's collator).
    """

    def __init__(self, text_dir: Path, context_length: int, padding: str, teacher: str):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
        except Exception as e:
            raise UsageError(f"{teacher}: cannot load the tokenizer from {text_dir} ({type(e).__name__}: "
                             f"{str(e)[:200]}); the folder needs vocab.txt (and tokenizer_config.json)") from None
        self.context_length = int(context_length)
        self.padding = padding
        self.pad_token_id = int(self.hf.pad_token_id if self.hf.pad_token_id is not None else 0)

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.hf(texts, padding=self.padding, truncation=True, max_length=self.context_length,
                       return_tensors="pt")["input_ids"]


class TeacherEncoder:
    """A hand-built teacher behind the ClipEncoder protocol (see mmkd.models.adapter).

    `model.encode_image(pixels_B3HW) -> feats_BD` and `model.encode_text(ids_BL) -> feats_BD` give
    raw features; this wrapper tokenizes, moves tensors to the device, and L2-normalises (float32).
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, name: str,
                 embed_dim: int, provenance: dict[str, Any], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.embed_dim = int(embed_dim)
        self.provenance = dict(provenance)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device, dtype=torch.float32))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts)).to(self.device)
        feats = self.model.encode_text(ids)
        return F.normalize(feats.float(), dim=-1)


def library_versions() -> dict[str, str]:
    import open_clip
    import torchvision
    import transformers

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def provenance(teacher: str, spec: str, weights: Path | list[Path], text_dir: Path, architecture: dict[str, Any],
               preprocess: dict[str, Any], context_length: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced this teacher's embeddings: weights checksum(s), architecture, preprocessing, versions.

    `sha256` is the file's checksum, or for several weight files the sha256 of their "name:sha256" lines.
    """
    import hashlib

    from mmkd.utils.io import sha256_file

    files = weights if isinstance(weights, list) else [weights]
    per_file = {str(p): sha256_file(p) for p in files}
    digest = per_file[str(files[0])] if len(files) == 1 else hashlib.sha256(
        "\n".join(f"{Path(p).name}:{h}" for p, h in per_file.items()).encode()).hexdigest()
    text_files = {p.name: sha256_file(p) for p in sorted(text_dir.iterdir())
                  if p.is_file() and p.suffix in (".json", ".txt")}
    return {"teacher": teacher, "spec": spec, "weights": str(files[0]) if len(files) == 1 else list(per_file),
            "sha256": digest, "weights_sha256": per_file, "text_model": str(text_dir),
            "text_files_sha256": text_files, "architecture": architecture, "preprocess": preprocess,
            "context_length": int(context_length), "libraries": library_versions(), **(extra or {})}
