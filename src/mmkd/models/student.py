"""The student CLIP: any open_clip model config, built with open_clip's own classes.

`create_student(name)` accepts an open_clip built-in name (`ViT-B-16-quickgelu`), a model-config
JSON file, a folder holding `open_clip_config.json` (an mmkd checkpoint or export), or one of
mmkd's configs in `mmkd/models/configs/` (`mmkd-tiny-vit`, `mmkd-tiny-vit-hf`, `mmkd-demo-vit`,
`mmkd-b16` — the paper's ViT-B/16 + BiomedBERT student).

HF text towers (BiomedBERT-style) are built from a local folder with the model's `config.json`
and tokenizer files (`hf_text_path`), so nothing is downloaded; weights in that folder start the
text tower, and `image_init` starts the image tower (`mmkd.models.init`, reported per tower).
mmkd-b16 pools text with the [CLS] last hidden state (no BERT pooler), as BiomedCLIP, UniMed-CLIP
and the MMKD-CLIP authors' student do.
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
        if hf_text_path:
            raise UsageError(f"--model.hf_text_path {hf_text_path!r}: the student's text tower is open_clip's own "
                             f"transformer, not a Hugging Face model, so the folder would be ignored; drop "
                             f"--model.hf_text_path, or choose a student with a Hugging Face text tower (e.g. "
                             f"--model mmkd-tiny-vit-hf, mmkd-b16)")
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


AUGMENTATIONS = ("random-resized-crop", "none")


def build_transforms(preprocess_cfg: dict[str, Any], augment: str = "random-resized-crop",
                     crop_scale_min: float = 0.9):
    """(train transform, eval transform) from a preprocess config.

    Training augmentation as the MMKD-CLIP authors' (their open_clip fork's train transform):
    `RandomResizedCrop(size, scale=(crop_scale_min, 1), ratio=(3/4, 4/3), bicubic)`, then the
    model's normalisation, no flip or colour jitter. `augment="none"` trains on the eval transform
    (resize, centre crop).
    """
    from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2

    if augment not in AUGMENTATIONS:
        raise UsageError(f"--data.augment: {augment!r} is not one of {', '.join(AUGMENTATIONS)}")
    pp = PreprocessCfg(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in preprocess_cfg.items()})
    eval_tf = image_transform_v2(pp, is_train=False)
    if augment == "none":
        return eval_tf, eval_tf
    return image_transform_v2(pp, is_train=True, aug_cfg=AugmentationCfg(scale=(crop_scale_min, 1.0))), eval_tf


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
                   context_length: int = 0, seed: int | None = None, image_init: str = "",
                   image_init_logit_scale: bool = True, text_pretrained: bool = True) -> Student:
    """Build a student from a config name (see module doc), optionally loading initial weights.

    `init` loads the whole student (strictly; see `weights.load_weights_into`). Without it the towers
    may start from pretrained weights (`mmkd.models.init`): the image tower from `image_init`, an HF
    text tower from the weights in `hf_text_path` (unless `text_pretrained` is False). What each
    tower got is in `student.source["towers"]`.
    """
    if init and image_init:
        raise UsageError(f"--model.image_init {image_init!r} and --init {init!r} are both set: --init loads the "
                         f"whole student and would overwrite the image tower; drop one of them")
    model_cfg, preprocess_overrides = resolve_model_config(name)
    bundled = Path(name[len("local-dir:"):] if name.startswith("local-dir:") else name)
    recorded = model_cfg.get("text_cfg", {}).get("hf_model_name") or ""
    if not hf_text_path and "hf_model_name" in model_cfg.get("text_cfg", {}) and (bundled / "config.json").is_file() \
            and not (Path(recorded) / "config.json").is_file():
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
    else:
        source["towers"] = _init_towers(model, model_cfg, image_init, image_init_logit_scale,
                                        text_pretrained)
    return Student(model, model_cfg, preprocess_cfg, tokenizer, train_tf, eval_tf, source)


def _init_towers(model: torch.nn.Module, model_cfg: dict[str, Any], image_init: str, logit_scale: bool,
                 text_pretrained: bool) -> dict[str, Any]:
    """Pretrained tower inits; each tower's entry is its report, or why it starts from random weights."""
    from mmkd.models.init import init_image_tower, init_text_tower

    towers: dict[str, Any] = {"image": {"init": "random", "why": "no --model.image_init"}}
    if image_init:
        towers["image"] = {"init": "pretrained", **init_image_tower(model, image_init, logit_scale).as_dict()}
    hf_name = model_cfg.get("text_cfg", {}).get("hf_model_name") or ""
    if not hf_name:
        towers["text"] = {"init": "random", "why": "an open_clip text tower (no pretrained text init)"}
    elif not text_pretrained:
        towers["text"] = {"init": "random", "why": "--model.text_pretrained false"}
    else:
        report = init_text_tower(model, hf_name)
        towers["text"] = ({"init": "pretrained", **report.as_dict()} if report is not None else
                          {"init": "random", "why": f"{hf_name} holds no weights (model.safetensors or "
                                                    f"pytorch_model.bin), only the config"})
    return towers


def describe_towers(source: dict[str, Any]) -> list[str]:
    """One human line per tower: what it starts from."""
    if "init" in source:
        init = source["init"]
        return [f"student <- {init['path']}" + (f" ({init['layout']} layout, renamed)" if init.get("layout") else "")]
    lines = []
    for tower, entry in source.get("towers", {}).items():
        if entry.get("init") == "random":
            lines.append(f"{tower} tower: random weights ({entry['why']})")
        else:
            text = (f"{tower} tower <- {entry['source']}: {entry['num_loaded']}/{entry['num_tensors']} tensors "
                    f"loaded, {len(entry['missing'])} missing, {len(entry['unexpected'])} unexpected, "
                    f"{len(entry['mismatched'])} mismatched")
            if entry.get("other_towers"):
                text += f", {entry['other_towers']} of other towers ignored"
            if entry["missing"]:
                text += f" (missing: {', '.join(entry['missing'][:3])}{', ...' if len(entry['missing']) > 3 else ''})"
            lines.append(text)
    return lines


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

