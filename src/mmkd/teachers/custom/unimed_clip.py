"""UniMed-CLIP (Khattak et al., 2024; github.com/mbzuai-oryx/UniMed-CLIP), rebuilt from its public code.

Spec: `unimed-clip:DIR[?tokenizer=TEXT_DIR&weights=FILE&config=JSON]`. Expected folder layout:

    DIR/unimed_clip_vit_b16.pt   the released checkpoint (linked from the project README; the Hub copy
                                 UzairK/unimed-clip-vit-b16 names it unimed-clip-vit-b16.pt):
                                 {"epoch", "name", "state_dict": {"module.visual...": ...}, ...}
                                 or a bare state dict, with or without the `module.` prefix
    DIR/text/                    Hugging Face folder of microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract
                                 (config.json + vocab.txt + tokenizer files)
    DIR/model_config.json        optional, an open_clip model config; default ViT-B-16 (embed 512)

Architecture: UniMed-CLIP's open_clip fork (a MetaCLIP fork) builds `CLIP(text_encoder_name=...)`:
`visual` is the classic CLIP ViT-B/16 with QuickGELU (conv1 patchify, class token, ln_pre,
12 residual blocks, ln_post on the class token, `proj` [768, 512]) — open_clip's
VisionTransformer has the same keys and forward; `text_encoder` is open_clip's `HFTextEncoder`
(BiomedBERT without pooler, [CLS] last hidden state, MLP projection 768 -> 640 -> 512 without
biases, attention mask from the pad id) — the fork's class is the same code; `logit_scale`.

Encoding as in the project's README: open_clip `HFTokenizer` with context length 256; images
resized (short side 224, bicubic), centre-cropped, OpenAI CLIP mean/std. Output: 512-d,
L2-normalised.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkd.errors import UsageError
from mmkd.models.adapter import ClipEncoder
from mmkd.teachers.custom import _common as common

TEACHER = "unimed-clip"
HF_TEXT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# the README link's name, and the Hub copy's (UzairK/unimed-clip-vit-b16, loaded by the project's app.py)
CHECKPOINT_NAMES = ("unimed_clip_vit_b16.pt", "unimed-clip-vit-b16.pt")
CONTEXT_LENGTH = 256
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# The fork's ViT-B-16-quickgelu model config (only the parts its CLIP class reads).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0,
                   "patch_size": 16},
}


class UniMedClip(nn.Module):
    """The fork's `CLIP` with the published attribute names (visual, text_encoder, logit_scale)."""

    def __init__(self, model_cfg: dict[str, Any], text_dir: Path):
        super().__init__()
        from open_clip.hf_model import HFTextEncoder
        from open_clip.transformer import QuickGELU, VisionTransformer

        vision = {**DEFAULT_MODEL_CONFIG["vision_cfg"], **model_cfg.get("vision_cfg", {})}
        embed_dim = int(model_cfg.get("embed_dim", DEFAULT_MODEL_CONFIG["embed_dim"]))
        act_layer = QuickGELU if model_cfg.get("quick_gelu", True) else nn.GELU
        self.visual = VisionTransformer(
            image_size=vision["image_size"], patch_size=vision["patch_size"], width=vision["width"],
            layers=vision["layers"], heads=vision["width"] // vision["head_width"], mlp_ratio=vision["mlp_ratio"],
            output_dim=embed_dim, act_layer=act_layer)
        self.text_encoder = HFTextEncoder(str(text_dir), output_dim=embed_dim, proj_type="mlp",
                                          pooler_type="cls_last_hidden_state_pooler", pretrained=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.embed_dim = embed_dim
        self.image_size = int(vision["image_size"])

    def encode_image(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels_B3HW)

    def encode_text(self, ids_BL: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids_BL)


def resolve_model_config(model_cfg: dict[str, Any] | None) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULT_MODEL_CONFIG)
    if model_cfg:
        cfg.update({k: v for k, v in model_cfg.items() if k != "vision_cfg"})
        cfg["vision_cfg"] = {**cfg["vision_cfg"], **model_cfg.get("vision_cfg", {})}
    if isinstance(cfg["vision_cfg"].get("layers"), (list, tuple)):
        raise UsageError(f"{TEACHER}: the model config describes a ResNet vision tower; UniMed-CLIP uses a ViT")
    return cfg


def build_model(model_cfg: dict[str, Any] | None, text_dir: Path) -> UniMedClip:
    """A randomly initialised UniMed-CLIP; the text tower's architecture comes from text_dir/config.json."""
    common.load_bert_config(text_dir, TEACHER)  # a clear error before open_clip reads the folder
    return UniMedClip(resolve_model_config(model_cfg), text_dir)


def load(path: str, device: str = "cpu", name: str | None = None) -> ClipEncoder:
    """Load UniMed-CLIP ViT-B/16 from a folder (layout in the module docstring) as a ClipEncoder (512-d)."""
    from open_clip.tokenizer import HFTokenizer
    from open_clip.transform import image_transform

    folder, options = common.parse_spec(path, ("tokenizer", "weights", "config"), TEACHER)
    text_dir = common.find_text_folder(folder, options.get("tokenizer"), TEACHER, HF_TEXT)
    weights = common.find_file(folder, options.get("weights"), CHECKPOINT_NAMES, (".pt", ".pth", ".bin"),
                               TEACHER, "UniMed-CLIP checkpoint (unimed_clip_vit_b16.pt)")
    model_cfg = resolve_model_config(common.read_json_option(folder, options.get("config"), "model_config.json",
                                                             TEACHER))
    state = common.read_published_checkpoint(weights, TEACHER)
    model = build_model(model_cfg, text_dir)
    common.load_strict(model, state, TEACHER, weights,
                       hint="Expected UniMed-CLIP's unimed_clip_vit_b16.pt (ViT-B/16 + BiomedBERT-base)")
    try:
        tokenizer = HFTokenizer(str(text_dir), context_length=CONTEXT_LENGTH)
    except Exception as e:
        raise UsageError(f"{TEACHER}: cannot load the tokenizer from {text_dir} ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None
    preprocess = image_transform(model.image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    preprocess_record = {"size": model.image_size, "resize": "shortest side, bicubic", "crop": "center",
                         "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}
    record = common.provenance(TEACHER, path, weights, text_dir, model_cfg, preprocess_record, CONTEXT_LENGTH,
                               extra={"text_pooling": "[CLS] last hidden state, MLP projection"})
    return common.TeacherEncoder(model, preprocess, tokenizer, name=name or TEACHER, embed_dim=model.embed_dim,
                                 provenance=record, device=device)
