"""Write teacher folders in the layouts the custom adapters read (the released containers and key names).

Used to test the loaders without the real weights (random values, published layout) and to
re-export a PMC-CLIP / MedCLIP / UniMed-CLIP model in its project's own format:

- `write_text_folder(DIR, bert_config, vocab)`: a Hugging Face BERT folder (config.json,
  vocab.txt, tokenizer_config.json) as `huggingface-cli download` leaves it, minus the weights.
- `save_pmc_clip(DIR, model)`: `checkpoint.pt` = {"epoch", "name", "state_dict" with the
  DistributedDataParallel `module.` prefix, "optimizer"}; `split=True` writes the three extracted
  encoder files instead.
- `save_medclip(DIR, model)`: `pytorch_model.bin`, a plain state dict with transformers-4.x key names.
- `save_unimed_clip(DIR, model)`: `unimed_clip_vit_b16.pt` in the fork's training container.

Files saved by the PyTorch/transformers versions of the time also held `position_ids` and
Swin `relative_position_index` buffers; they are written too, as the released files have them.
An architecture that differs from the published default is recorded next to the weights
(`model_config.json`, `vision/config.json`) so that the loader rebuilds the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_text_folder(folder: str | Path, bert_config, vocab: Iterable[str], lowercase: bool = True) -> Path:
    """A BERT tokenizer + config folder. `vocab` lists WordPiece tokens; the special tokens come first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(SPECIAL_TOKENS) + [t for t in vocab if t not in SPECIAL_TOKENS]
    if bert_config.vocab_size < len(tokens):
        raise ValueError(f"vocab has {len(tokens)} tokens but the config's vocab_size is {bert_config.vocab_size}")
    bert_config.pad_token_id = 0
    bert_config.save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": 512}))
    return folder


def _legacy_bert_buffers(prefix: str, bert_config) -> dict[str, torch.Tensor]:
    return {f"{prefix}embeddings.position_ids": torch.arange(bert_config.max_position_embeddings)[None]}


def _training_container(state: dict[str, torch.Tensor], name: str, epoch: int) -> dict:
    """What an open_clip-style training loop saves from a DistributedDataParallel model."""
    return {"epoch": epoch, "name": name, "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.1, "params": [0, 1]}]}}


def save_pmc_clip(folder: str | Path, model, split: bool = False) -> Path:
    """Write `model` (a PmcClip) as PMC-CLIP's checkpoint.pt, or as the three extracted encoder files."""
    from mmkd.teachers.custom.pmc_clip import PmcClipConfig, to_split_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(model.state_dict())
    state.update(_legacy_bert_buffers("text_encoder.", model.text_encoder.config))
    default = PmcClipConfig()
    if (model.cfg.to_pmc_json() != default.to_pmc_json()):
        (folder / "model_config.json").write_text(json.dumps(model.cfg.to_pmc_json(), indent=2))
    if split:
        for file_name, obj in to_split_files(state).items():
            torch.save(obj, folder / file_name)
        return folder
    path = folder / "checkpoint.pt"
    torch.save(_training_container(state, "pmc_clip_RN50_fusion4", epoch=100), path)
    return path


def save_medclip(folder: str | Path, model) -> Path:
    """Write `model` (a MedClip) as MedCLIP's pytorch_model.bin with the published key names."""
    from mmkd.teachers.custom.medclip import MedClipSwinVision, default_swin_config, to_published

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model.vision_model, MedClipSwinVision):
        config = model.vision_model.model.config
        if _swin_arch(config) != _swin_arch(default_swin_config()):
            (folder / "vision").mkdir(exist_ok=True)
            config.to_json_file(str(folder / "vision" / "config.json"))
    path = folder / "pytorch_model.bin"
    torch.save(to_published(model), path)
    return path


def _swin_arch(config) -> tuple:
    return (config.image_size, config.patch_size, config.embed_dim, tuple(config.depths), tuple(config.num_heads),
            config.window_size, config.mlp_ratio)


def save_unimed_clip(folder: str | Path, model, model_cfg: dict | None = None,
                     file_name: str = "unimed_clip_vit_b16.pt") -> Path:
    """Write `model` (a UniMedClip) in the fork's training container, as unimed_clip_vit_b16.pt (the README's
    link) or, with `file_name="unimed-clip-vit-b16.pt"`, as the Hub copy UzairK/unimed-clip-vit-b16 names it."""
    from mmkd.teachers.custom.unimed_clip import DEFAULT_MODEL_CONFIG, resolve_model_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = resolve_model_config(model_cfg)
    if cfg != resolve_model_config(DEFAULT_MODEL_CONFIG):
        (folder / "model_config.json").write_text(json.dumps(cfg, indent=2))
    state = dict(model.state_dict())
    state.update(_legacy_bert_buffers("text_encoder.transformer.", model.text_encoder.config))
    path = folder / file_name
    torch.save(_training_container(state, "unimed_clip_vit_b16", epoch=40), path)
    return path
