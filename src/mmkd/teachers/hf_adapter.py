"""Hugging Face transformers teachers: `CLIPModel` and `SiglipModel` folders or hub ids (`hf:`).

Legend: B batch, D embedding dim.

The teacher's own image processor (`preprocessor_config.json`) and tokenizer are used;
texts are truncated to the model's context length (SigLIP pads to it, as it was trained).
`get_image_features`/`get_text_features` return an output object in transformers 5 whose
`pooler_output` holds the projected embeddings; older versions return the tensor itself.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmkd.errors import UsageError
from mmkd.teachers.provenance import hash_weights, jsonable, library_versions, weight_files

SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}


def _features(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise RuntimeError(f"transformers returned {type(out).__name__} without pooler_output")
    return pooled


class HFClipEncoder:
    """A transformers CLIPModel/SiglipModel behind the ClipEncoder protocol."""

    def __init__(self, model, image_processor, tokenizer, name: str, provenance: dict[str, Any],
                 context_length: int, pad_to_max: bool, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.context_length = context_length
        self.pad_to_max = pad_to_max
        self.provenance = provenance
        self.embed_dim = int(getattr(model.config, "projection_dim", 0) or model.config.text_config.hidden_size)

    def preprocess(self, image) -> torch.Tensor:
        """PIL RGB -> [3, H, W] float tensor, by the teacher's own image processor."""
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.pad_to_max else True
        return self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.context_length,
                              return_tensors="pt")

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()
                  if k in ("input_ids", "attention_mask", "position_ids")}
        if type(self.model).__name__.startswith("Siglip"):
            tokens.pop("attention_mask", None)  # SigLIP was trained without a text attention mask
        out = self.model.get_text_features(**tokens)
        return F.normalize(_features(out).float(), dim=-1)


def load_hf_clip(path_or_id: str, spec: str, device: str = "cpu", name: str | None = None,
                 how_to_get: str = "") -> HFClipEncoder:
    import transformers

    folder = Path(path_or_id)
    if not folder.is_dir():
        if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
            raise UsageError(f"--teacher: {spec!r}: {path_or_id!r} is neither a folder nor a Hugging Face repo id "
                             f"(ORG/NAME)")
        from mmkd.teachers.hub import resolve_hub_repo

        folder = resolve_hub_repo(path_or_id, how_to_get=how_to_get)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"--teacher: {spec!r}: {folder} has no config.json; save the model with save_pretrained")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type not in SUPPORTED:
        raise UsageError(f"--teacher: {spec!r}: model_type {model_type!r} is not supported by the hf: loader "
                         f"(supported: {', '.join(SUPPORTED)}); open_clip folders load with local-dir:")
    files = weight_files(folder)
    if not files:
        raise UsageError(f"--teacher: {spec!r}: no weights file in {folder}; copy model.safetensors there")
    model_cls = getattr(transformers, SUPPORTED[model_type])
    try:
        model = model_cls.from_pretrained(str(folder), use_safetensors=any(f.suffix == ".safetensors" for f in files))
        image_processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except pickle.UnpicklingError:  # a pytorch_model.bin that is not plain tensors: refused, never retried unsafely
        raise UsageError(f"--teacher: {spec!r}: transformers could not load {folder}: refused to load its weights, "
                         f"they are not a plain tensor checkpoint (opened with weights_only=True only); convert "
                         f"trusted files to model.safetensors") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--teacher: {spec!r}: transformers could not load {folder} ({str(e)[:300]})") from None
    max_positions = int(model.config.text_config.max_position_embeddings)
    tok_max = getattr(tokenizer, "model_max_length", max_positions) or max_positions
    context_length = int(min(max_positions, tok_max))
    pad_to_max = model_type.startswith("siglip")
    proc = image_processor.to_dict()
    preprocess = {k: proc.get(k) for k in ("size", "crop_size", "do_center_crop", "do_resize", "resample",
                                          "image_mean", "image_std", "do_normalize", "rescale_factor",
                                          "do_convert_rgb", "image_processor_type") if k in proc}
    provenance = {
        "spec": spec,
        "loader": f"transformers:{SUPPORTED[model_type]}",
        "weights": hash_weights(f for f in files if f.suffix == ".safetensors") or hash_weights(files),
        "preprocess": jsonable(preprocess),
        "tokenizer": {"class": type(tokenizer).__name__, "context_length": context_length,
                      "padding": "max_length" if pad_to_max else "longest", "truncation": True},
        "versions": library_versions("transformers"),
    }
    return HFClipEncoder(model, image_processor, tokenizer, name or folder.name, provenance, context_length,
                         pad_to_max, device)
