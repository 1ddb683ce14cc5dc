"""The student CLIP: any open_clip model config, built with open_clip's own classes.

`create_student(name)` accepts an open_clip built-in name (`ViT-B-16-quickgelu`), a model-config
JSON file, a folder holding `open_clip_config.json` (an mmkd checkpoint or export), or one of
mmkd's configs in `mmkd/models/configs/` (`mmkd-tiny-vit`, `mmkd-tiny-vit-hf`, `mmkd-demo-vit`,
`mmkd-b16` — the paper's ViT-B/16 + BiomedBERT student).

HF text towers (BiomedBERT-style) are built from a local folder with the model's `config.json`
and tokenizer files (`hf_text_path`), so nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkd.errors import UsageError

CONFIG_DIR = Path(__file__).parent / "configs"
CHECKPOINT_CONFIG = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def builtin_student_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_model_config(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) for a model name, JSON file or checkpoint folder."""
    import open_clip

    path = Path(name)
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):])
    if path.is_dir() and (path / CHECKPOINT_CONFIG).is_file():
        saved = json.loads((path / CHECKPOINT_CONFIG).read_text())
        return saved["model_cfg"], saved.get("preprocess_cfg", {})
    if path.suffix == ".json" and path.is_file():
        cfg = json.loads(path.read_text())
        if "model_cfg" in cfg:
            return cfg["model_cfg"], cfg.get("preprocess_cfg", {})
        return cfg, {}
    if (CONFIG_DIR / f"{name}.json").is_file():
        return json.loads((CONFIG_DIR / f"{name}.json").read_text()), {}
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UsageError(
            f"--model: {name!r} is not an open_clip model name, an mmkd config ({', '.join(builtin_student_configs())}), "
            f"a model-config JSON file or a checkpoint folder; see `open_clip.list_models()` for built-in names"
        )
    return copy.deepcopy(cfg), {}


def default_preprocess_cfg(model_cfg: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict
    from dataclasses import asdict

    vision = model_cfg.get("vision_cfg", {})
    base = asdict(PreprocessCfg(size=vision.get("image_size", 224)))
    for k in ("mean", "std", "interpolation", "resize_mode"):  # some configs carry image_mean etc.
        if f"image_{k}" in vision:
            base[k] = vision[f"image_{k}"]
    merged = merge_preprocess_dict(base, overrides or {})
    merged["mean"], merged["std"] = list(merged["mean"]), list(merged["std"])
    return merged


def apply_hf_text_path(model_cfg: dict[str, Any], hf_text_path: str) -> dict[str, Any]:
    text = model_cfg.get("text_cfg", {})
    if "hf_model_name" not in text:
        return model_cfg
    if hf_text_path:
        text["hf_model_name"] = hf_text_path
        text["hf_tokenizer_name"] = hf_text_path
    name = text.get("hf_model_name") or ""
    if not name or not (Path(name) / "config.json").is_file():
        raise UsageError(
            f"--model.hf_text_path: the model's text tower is a Hugging Face model ({name or 'unset'!r}) but no local "
            f"folder with its config.json was found; download it once (e.g. `huggingface-cli download "
            f"microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract --local-dir DIR`) and pass --model.hf_text_path DIR"
        )
    return model_cfg


def build_open_clip_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate CLIP or CustomTextCLIP from a model config, randomly initialised, on CPU, fp32."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    is_hf = "hf_model_name" in cfg.get("text_cfg", {})
    if is_hf:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf
    if "multimodal_cfg" in cfg:
        raise UsageError("--model: CoCa models are not supported as students")
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def build_tokenizer(model_cfg: dict[str, Any], tokenizer_dir: str | None = None):
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = model_cfg.get("text_cfg", {})
    context_length = text.get("context_length", 77)
    hf_name = text.get("hf_tokenizer_name") or text.get("hf_model_name")
    if hf_name:
        return HFTokenizer(tokenizer_dir or hf_name, context_length=context_length,
                           tokenizer_mode=text.get("tokenizer_mode"))
    return SimpleTokenizer(context_length=context_length, **text.get("tokenizer_kwargs", {}))


def build_transforms(preprocess_cfg: dict[str, Any]):
    """(train transform, eval transform) from a preprocess config."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = PreprocessCfg(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in preprocess_cfg.items()})
    return image_transform_v2(pp, is_train=False), image_transform_v2(pp, is_train=False)


@dataclass
class Student:
    """A student CLIP with everything needed to train, save and reload it."""

    model: torch.nn.Module
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Any
    train_transform: Any
    eval_transform: Any
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    def open_clip_config(self) -> dict[str, Any]:
        return {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}


def create_student(name: str = "mmkd-tiny-vit", init: str = "", hf_text_path: str = "",
                   context_length: int = 0, seed: int | None = None) -> Student:
    """Build a student from a config name (see module doc), optionally loading initial weights."""
    model_cfg, preprocess_overrides = resolve_model_config(name)
    bundled = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
    recorded = model_cfg.get("text_cfg", {}).get("hf_model_name") or ""
    if not hf_text_path and (bundled / "config.json").is_file() and not (Path(recorded) / "config.json").is_file():
        hf_text_path = str(bundled)  # a moved checkpoint/export carries the HF config and tokenizer itself
    model_cfg = apply_hf_text_path(model_cfg, hf_text_path)
    if context_length:
        model_cfg["text_cfg"]["context_length"] = context_length
    preprocess_cfg = default_preprocess_cfg(model_cfg, preprocess_overrides)
    if seed is not None:
        torch.manual_seed(seed)
    model = build_open_clip_model(model_cfg)
    tokenizer_dir = None
    folder = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
    if folder.is_dir() and any(folder.glob("tokenizer*.json")) or (folder.is_dir() and (folder / "vocab.txt").is_file()):
        tokenizer_dir = str(folder)
    tokenizer = build_tokenizer(model_cfg, tokenizer_dir)
    train_tf, eval_tf = build_transforms(preprocess_cfg)
    source: dict[str, Any] = {"name": name}
    if folder.is_dir() and (folder / WEIGHTS_FILE).is_file() and not init:
        init = str(folder)
    if init:
        from mmkd.models.weights import load_weights_into

        source["init"] = load_weights_into(model, init)
    return Student(model, model_cfg, preprocess_cfg, tokenizer, train_tf, eval_tf, source)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

