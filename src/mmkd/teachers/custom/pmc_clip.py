"""PMC-CLIP (Lin et al., MICCAI 2023; github.com/WeixiongLin/PMC-CLIP), rebuilt from its public code.

Spec: `pmc-clip:DIR[?tokenizer=TEXT_DIR&weights=FILE&config=JSON]`. Expected folder layout:

    DIR/checkpoint.pt        the released training checkpoint (HF dataset axiong/pmc_oa_beta):
                             {"epoch", "name", "state_dict": {"module.visual...": ...}, "optimizer", ...}
    DIR/text/                Hugging Face folder of the text model the checkpoint was trained from,
                             microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext
                             (formerly PubMedBERT): config.json + vocab.txt (+ tokenizer_config.json)
    DIR/model_config.json    optional, PMC-CLIP's own model-config format; default RN50_fusion4

or, instead of checkpoint.pt, the three extracted encoder files of HF dataset axiong/pmc_oa:
`image_encoder(resnet50).pth` (ModifiedResNet state dict), `text_encoder.pth` (BertModel state
dict) and `text_projection_layer.pth` (the [768, 768] projection tensor).

Architecture (RN50_fusion4): a CLIP ModifiedResNet-50 image tower (3-conv stem, anti-aliased
strides, attention pooling with width*32/head_width = 32 heads) projecting to 768; a BERT-base
text tower whose [CLS] last hidden state is multiplied by `text_projection` [768, 768]; plus
training-only parts the checkpoint carries and that encoding does not use: a 4-layer fusion
transformer, an image special token, the MLM head, an unused positional embedding and ln_final.
Open_clip's ModifiedResNet and Transformer have exactly PMC-CLIP's key names, so we use them.

Encoding follows the training code (`PMC_CLIP.encode_text`): captions padded to the 77-token
context, no attention mask passed to BERT, the [CLS] position taken. Images: resize the short
side to 224 (bicubic), centre crop, OpenAI CLIP mean/std. Output: 768-d, L2-normalised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkd.errors import UsageError
from mmkd.models.adapter import ClipEncoder
from mmkd.teachers.custom import _common as common

TEACHER = "pmc-clip"
HF_TEXT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
CHECKPOINT_NAMES = ("checkpoint.pt",)
SPLIT_FILES = {"visual": "image_encoder(resnet50).pth", "text_encoder": "text_encoder.pth",
               "text_projection": "text_projection_layer.pth"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PmcClipConfig:
    """PMC-CLIP's RN50_fusion4 model config (defaults) in flat form."""

    embed_dim: int = 768
    image_size: int = 224
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 64
    vision_head_width: int = 64
    context_length: int = 77
    vocab_size: int = 30522
    text_width: int = 768
    text_heads: int = 8
    fusion_layers: int = 4
    mlm: bool = True  # the released checkpoint was trained with --mlm and carries `mlm_projection`
    training_parts: bool = True  # False for the three extracted encoder files (no fusion/MLM parts)

    @classmethod
    def from_pmc_json(cls, cfg: dict[str, Any] | None) -> PmcClipConfig:
        """From PMC-CLIP's own JSON format ({"embed_dim", "vision_cfg": {...}, "text_cfg": {...}})."""
        if not cfg:
            return cls()
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        base = cls()
        return cls(embed_dim=int(cfg.get("embed_dim", base.embed_dim)),
                   image_size=int(vision.get("image_size", base.image_size)),
                   vision_layers=tuple(vision.get("layers", base.vision_layers)),
                   vision_width=int(vision.get("width", base.vision_width)),
                   vision_head_width=int(vision.get("head_width", base.vision_head_width)),
                   context_length=int(text.get("context_length", base.context_length)),
                   vocab_size=int(text.get("vocab_size", base.vocab_size)),
                   text_width=int(text.get("width", base.text_width)),
                   text_heads=int(text.get("heads", base.text_heads)),
                   fusion_layers=int(text.get("fusion_layers", base.fusion_layers)))

    def to_pmc_json(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "clip_model": "PMC_CLIP",
                "vision_cfg": {"image_size": self.image_size, "layers": list(self.vision_layers),
                               "width": self.vision_width, "head_width": self.vision_head_width},
                "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                             "width": self.text_width, "heads": self.text_heads,
                             "fusion_layers": self.fusion_layers, "bert_model_name": HF_TEXT}}


class PmcClip(nn.Module):
    """PMC_CLIP with the published attribute (= state-dict key) names."""

    def __init__(self, cfg: PmcClipConfig, bert_config):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import Transformer
        from transformers import BertModel

        self.cfg = cfg
        self.visual = ModifiedResNet(layers=list(cfg.vision_layers), output_dim=cfg.embed_dim,
                                     heads=cfg.vision_width * 32 // cfg.vision_head_width,
                                     image_size=cfg.image_size, width=cfg.vision_width)
        self.text_encoder = BertModel(bert_config, add_pooling_layer=True)  # AutoModel default: with pooler
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        if cfg.training_parts:
            self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
            self.ln_final = nn.LayerNorm(cfg.text_width)
            if cfg.mlm:
                self.mlm_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.vocab_size))
            self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
            self.img_special_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
            self.fusion_module = Transformer(width=cfg.text_width, layers=cfg.fusion_layers, heads=cfg.text_heads)
        self._init_own_parameters()

    def _init_own_parameters(self) -> None:
        scale = self.cfg.text_width ** -0.5
        nn.init.normal_(self.text_projection, std=scale)
        if self.cfg.training_parts:
            nn.init.normal_(self.positional_embedding, std=0.01)
            if self.cfg.mlm:
                nn.init.normal_(self.mlm_projection, std=scale)

    def encode_image(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels_B3HW)  # [B, embed_dim], not normalised

    def encode_text(self, ids_BL: torch.Tensor) -> torch.Tensor:
        # As in training: no attention mask, the [CLS] token's last hidden state, then the projection.
        hidden_BLW = self.text_encoder(input_ids=ids_BL).last_hidden_state
        return hidden_BLW[:, 0] @ self.text_projection


def build_model(cfg: PmcClipConfig, bert_config) -> PmcClip:
    """A randomly initialised PMC-CLIP; raises UsageError when the text model does not fit the config."""
    if bert_config.hidden_size != cfg.text_width:
        raise UsageError(f"{TEACHER}: the text model has hidden_size {bert_config.hidden_size} but the model config "
                         f"says text width {cfg.text_width}; the text folder must hold {HF_TEXT}")
    if cfg.embed_dim != cfg.text_width and cfg.training_parts:
        raise UsageError(f"{TEACHER}: embed_dim {cfg.embed_dim} must equal the text width {cfg.text_width} "
                         f"(the fusion module mixes image features into the text tokens)")
    if cfg.context_length > bert_config.max_position_embeddings:
        raise UsageError(f"{TEACHER}: context length {cfg.context_length} exceeds the text model's "
                         f"max_position_embeddings {bert_config.max_position_embeddings}")
    return PmcClip(cfg, bert_config)


def to_split_files(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The three extracted encoder files (axiong/pmc_oa layout) of a full state dict."""
    return {SPLIT_FILES["visual"]: {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")},
            SPLIT_FILES["text_encoder"]: {k[len("text_encoder."):]: v for k, v in state.items()
                                          if k.startswith("text_encoder.")},
            SPLIT_FILES["text_projection"]: state["text_projection"]}


def _read_split_files(folder: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    state: dict[str, torch.Tensor] = {}
    for prefix in ("visual", "text_encoder"):
        for key, value in common.read_published_checkpoint(folder / SPLIT_FILES[prefix], TEACHER).items():
            state[f"{prefix}.{key}"] = value
    path = folder / SPLIT_FILES["text_projection"]
    try:
        projection = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{TEACHER}: cannot read {path} with weights_only=True ({type(e).__name__}: "
                         f"{str(e)[:200]}); the file may be truncated") from None
    if not isinstance(projection, torch.Tensor):
        raise UsageError(f"{TEACHER}: {path} should hold the text projection tensor, found {type(projection).__name__}")
    state["text_projection"] = projection.detach()
    return state, [folder / f for f in SPLIT_FILES.values()]


def load(path: str, device: str = "cpu", name: str | None = None) -> ClipEncoder:
    """Load PMC-CLIP from a folder (layout in the module docstring) as a ClipEncoder (768-d)."""
    from open_clip.transform import image_transform

    folder, options = common.parse_spec(path, ("tokenizer", "weights", "config"), TEACHER)
    text_dir = common.find_text_folder(folder, options.get("tokenizer"), TEACHER, HF_TEXT)
    cfg = PmcClipConfig.from_pmc_json(common.read_json_option(folder, options.get("config"),
                                                              "model_config.json", TEACHER))
    split = not options.get("weights") and not (folder / CHECKPOINT_NAMES[0]).is_file() and all(
        (folder / f).is_file() for f in SPLIT_FILES.values())
    weights: Path | list[Path]
    if split:
        state, weights = _read_split_files(folder)
        cfg.training_parts = False
    else:
        weights = checkpoint = common.find_file(folder, options.get("weights"), CHECKPOINT_NAMES,
                                                (".pt", ".pth", ".bin"), TEACHER, "PMC-CLIP checkpoint (checkpoint.pt)")
        state = common.read_published_checkpoint(checkpoint, TEACHER)
        cfg.mlm = "mlm_projection" in state  # the MLM head exists only in checkpoints trained with --mlm
    bert_config = common.load_bert_config(text_dir, TEACHER)
    model = build_model(cfg, bert_config)
    common.load_strict(model, state, TEACHER, folder if split else checkpoint,
                       hint="Expected PMC-CLIP's checkpoint.pt (RN50_fusion4) or its three extracted encoder files")
    preprocess = image_transform(cfg.image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    tokenizer = common.BertIdsTokenizer(text_dir, cfg.context_length, padding="max_length", teacher=TEACHER)
    preprocess_record = {"size": cfg.image_size, "resize": "shortest side, bicubic", "crop": "center",
                         "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}
    record = common.provenance(TEACHER, path, weights, text_dir, {**asdict(cfg), "layout": "split" if split else
                                                                   "checkpoint"},
                               preprocess_record, cfg.context_length,
                               extra={"text_pooling": "[CLS] last hidden state, no attention mask"})
    return common.TeacherEncoder(model, preprocess, tokenizer, name=name or TEACHER, embed_dim=cfg.embed_dim,
                                 provenance=record, device=device)
