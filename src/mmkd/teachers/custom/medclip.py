"""MedCLIP (Wang et al., EMNLP 2022; github.com/RyanWangZf/MedCLIP), rebuilt from its public code.

Spec: `medclip:DIR[?tokenizer=TEXT_DIR&weights=FILE&vision=swin|resnet50&vision_config=DIR]`.
Expected folder layout:

    DIR/pytorch_model.bin    the released weights (the zip behind medclip_vit_weight.txt or
                             medclip_resnet_weight.txt, unzipped): a plain state dict
    DIR/text/                Hugging Face folder of emilyalsentzer/Bio_ClinicalBERT
                             (config.json + vocab.txt)
    DIR/vision/config.json   optional; the Swin config (microsoft/swin-tiny-patch4-window7-224).
                             Without it the published Swin-T config is used.

Architecture (`MedCLIPModel`): `vision_model` is either Swin-T (`MedCLIPVisionModelViT`: the
Swin pooler output [768] -> `projection_head` Linear(768, 512, no bias)) or a torchvision
ResNet-50 whose `fc` is Linear(2048, 512, no bias) (`MedCLIPVisionModel`); the variant is read
from the checkpoint's keys unless `?vision=` says it. `text_model` is Bio_ClinicalBERT with its
pooler; the text feature is the mean over tokens of the average of hidden layers 1, 2 and the
last, then `projection_head` Linear(768, 512, no bias). `logit_scale` is a scalar.

The released weights were saved with transformers 4.x, whose Swin key names differ from
transformers 5 (`attention.self.query` -> `attention.q_proj`, ...); `from_published` and
`to_published` translate between the published names and the installed library's.

Two deliberate choices, both documented in the provenance:
- MedCLIP's collator pads a batch to its longest caption and its mean runs over padding too,
  so a caption's embedding depended on its batch. We average over the caption's own tokens
  (the value MedCLIP gives a caption encoded alone), so features do not depend on batching.
- Images as in `MedCLIPFeatureExtractor`: grey-scale, zero-padded to a square (at least 224),
  resized to 224 (bicubic), normalised with mean 0.5863 / std 0.2795, repeated to 3 channels.
Output: 512-d, L2-normalised.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkd.errors import UsageError
from mmkd.models.adapter import ClipEncoder
from mmkd.teachers.custom import _common as common

TEACHER = "medclip"
HF_TEXT = "emilyalsentzer/Bio_ClinicalBERT"
HF_VISION = "microsoft/swin-tiny-patch4-window7-224"
WEIGHTS_NAME = "pytorch_model.bin"
PROJ_DIM = 512
CONTEXT_LENGTH = 77  # MedCLIPProcessor sets tokenizer.model_max_length = 77
IMG_SIZE = 224
IMG_MEAN = 0.5862785803043838
IMG_STD = 0.27950088968644304
RESNET_FEATURES = 2048
SWIN_PREFIX = "vision_model.model."

# transformers 4.x Swin key names (published) -> transformers 5.x names; applied under SWIN_PREFIX only
# (the BERT text tower keeps `attention.self.query` in every version).
_SWIN_RENAMES = (
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attention.relative_position_bias.relative_position_bias_table"),
    (r"\.attention\.self\.relative_position_index$", ".attention.relative_position_bias.relative_position_index"),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
_SWIN_RENAMES_BACK = (
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".attention.self.relative_position_bias_table"),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)


class MedClipSwinVision(nn.Module):
    """`MedCLIPVisionModelViT`: Swin pooler output -> projection_head (no bias)."""

    def __init__(self, swin_config):
        super().__init__()
        from transformers import SwinModel

        self.model = SwinModel(swin_config)  # AutoModel default: with the (parameter-free) pooler
        hidden = int(swin_config.embed_dim * 2 ** (len(swin_config.depths) - 1))
        self.projection_head = nn.Linear(hidden, PROJ_DIM, bias=False)

    def forward(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.model(pixel_values=pixels_B3HW).pooler_output)


class MedClipResNetVision(nn.Module):
    """`MedCLIPVisionModel`: torchvision ResNet-50 with fc = Linear(2048, 512, no bias)."""

    def __init__(self):
        super().__init__()
        import torchvision

        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Linear(RESNET_FEATURES, PROJ_DIM, bias=False)

    def forward(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.model(pixels_B3HW)


class MedClipText(nn.Module):
    """`MedCLIPTextModel`: mean over tokens of hidden layers (1, 2, last) -> projection_head (no bias)."""

    def __init__(self, bert_config):
        super().__init__()
        from transformers import BertModel

        self.model = BertModel(bert_config, add_pooling_layer=True)
        self.projection_head = nn.Linear(bert_config.hidden_size, PROJ_DIM, bias=False)

    def forward(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids_BL, attention_mask=mask_BL.long(), output_hidden_states=True)
        layers = out.hidden_states  # (embeddings, layer 1, ..., layer N), each [B, L, W]
        hidden_BLW = torch.stack([layers[1], layers[2], layers[-1]]).mean(0)
        weights_BL1 = mask_BL.unsqueeze(-1).to(hidden_BLW.dtype)
        pooled_BW = (hidden_BLW * weights_BL1).sum(1) / weights_BL1.sum(1).clamp_min(1.0)
        return self.projection_head(pooled_BW)


class MedClip(nn.Module):
    """`MedCLIPModel` with the published attribute names (vision_model, text_model, logit_scale)."""

    def __init__(self, vision: str, bert_config, swin_config=None, pad_token_id: int = 0):
        super().__init__()
        self.vision_model = MedClipSwinVision(swin_config) if vision == "swin" else MedClipResNetVision()
        self.text_model = MedClipText(bert_config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.pad_token_id = int(pad_token_id)

    def encode_image(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixels_B3HW)

    def encode_text(self, ids_BL: torch.Tensor) -> torch.Tensor:
        return self.text_model(ids_BL, ids_BL != self.pad_token_id)


def default_swin_config():
    """The published microsoft/swin-tiny-patch4-window7-224 architecture (SwinConfig's defaults)."""
    from transformers import SwinConfig

    return SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                      window_size=7, drop_path_rate=0.1)


def build_model(vision: str, bert_config, swin_config=None, pad_token_id: int = 0) -> MedClip:
    if vision not in ("swin", "resnet50"):
        raise UsageError(f"{TEACHER}: vision={vision!r}; choose swin (MedCLIP-ViT) or resnet50 (MedCLIP-ResNet)")
    if bert_config.num_hidden_layers < 2:
        raise UsageError(f"{TEACHER}: the text model has {bert_config.num_hidden_layers} layer(s); MedCLIP pools "
                         f"hidden layers 1, 2 and the last, so it needs at least 2 (Bio_ClinicalBERT has 12)")
    return MedClip(vision, bert_config, swin_config or default_swin_config(), pad_token_id)


def from_published(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Published (transformers 4.x) key names -> the installed library's names, where they differ."""
    out = {}
    for key, value in state.items():
        if key not in model_keys and key.startswith(SWIN_PREFIX):
            for pattern, new in _SWIN_RENAMES:
                key = re.sub(pattern, new, key)
        out[key] = value
    return out


def to_published(model: MedClip) -> dict[str, torch.Tensor]:
    """The model's state dict under the published key names, with the buffers transformers 4.x saved."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(SWIN_PREFIX):
            for pattern, old in _SWIN_RENAMES_BACK:
                key = re.sub(pattern, old, key)
        state[key] = value.clone()
    bert = model.text_model.model.config
    state["text_model.model.embeddings.position_ids"] = torch.arange(bert.max_position_embeddings)[None]
    if isinstance(model.vision_model, MedClipSwinVision):
        swin = model.vision_model.model.config
        index = _relative_position_index(swin.window_size)
        for key in [k for k in state if k.endswith("attention.self.relative_position_bias_table")]:
            state[key.replace("relative_position_bias_table", "relative_position_index")] = index.clone()
    return state


def _relative_position_index(window: int) -> torch.Tensor:
    """Swin's [window², window²] relative position index, as transformers 4.x saved it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


class MedClipPreprocess:
    """PIL image -> [3, size, size] float tensor, as MedCLIPFeatureExtractor (grey, pad square, resize)."""

    def __init__(self, size: int = IMG_SIZE, mean: float = IMG_MEAN, std: float = IMG_STD):
        self.size, self.mean, self.std = int(size), float(mean), float(std)

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import functional as TF

        grey = image.convert("L")
        side = max(self.size, *grey.size)
        square = Image.new("L", (side, side), 0)
        square.paste(grey, ((side - grey.size[0]) // 2, (side - grey.size[1]) // 2))
        resized = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels_1HW = TF.to_tensor(resized)
        return ((pixels_1HW - self.mean) / self.std).repeat(3, 1, 1)

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "steps": "grey, zero-pad to square (>= size), resize bicubic",
                "mean": self.mean, "std": self.std, "channels": "grey repeated to 3"}


def _detect_vision(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith(SWIN_PREFIX + "embeddings.") for k in state):
        return "swin"
    if SWIN_PREFIX + "conv1.weight" in state:
        return "resnet50"
    raise UsageError(f"{TEACHER}: the checkpoint has neither a Swin ({SWIN_PREFIX}embeddings.*) nor a ResNet-50 "
                     f"({SWIN_PREFIX}conv1.weight) vision tower; missing keys: {SWIN_PREFIX}embeddings.*, "
                     f"{SWIN_PREFIX}conv1.weight. Is it MedCLIP's pytorch_model.bin?")


def load(path: str, device: str = "cpu", name: str | None = None) -> ClipEncoder:
    """Load MedCLIP (Swin-T or ResNet-50 variant) from a folder as a ClipEncoder (512-d)."""
    folder, options = common.parse_spec(path, ("tokenizer", "weights", "vision", "vision_config"), TEACHER)
    text_dir = common.find_text_folder(folder, options.get("tokenizer"), TEACHER, HF_TEXT)
    weights = common.find_file(folder, options.get("weights"), (WEIGHTS_NAME,), (".bin", ".pt", ".pth"),
                               TEACHER, f"MedCLIP weights ({WEIGHTS_NAME})")
    state = common.read_published_checkpoint(weights, TEACHER)
    vision = options.get("vision") or _detect_vision(state)
    swin_config = _read_swin_config(folder, options.get("vision_config")) if vision == "swin" else None
    bert_config = common.load_bert_config(text_dir, TEACHER)
    tokenizer = common.BertIdsTokenizer(text_dir, CONTEXT_LENGTH, padding="longest", teacher=TEACHER)
    model = build_model(vision, bert_config, swin_config, tokenizer.pad_token_id)
    state = from_published(state, set(model.state_dict()))
    common.load_strict(model, state, TEACHER, weights,
                       hint=f"Expected MedCLIP's {WEIGHTS_NAME} ({vision} vision tower, Bio_ClinicalBERT text tower)")
    image_size = int(swin_config.image_size) if swin_config is not None else IMG_SIZE
    preprocess = MedClipPreprocess(image_size)
    architecture = {"vision": vision, "proj_dim": PROJ_DIM,
                    "swin": swin_config.to_dict() if swin_config is not None else None}
    record = common.provenance(TEACHER, path, weights, text_dir, architecture, preprocess.describe(), CONTEXT_LENGTH,
                               extra={"text_pooling": "mean over the caption's tokens of hidden layers 1, 2, last"})
    return common.TeacherEncoder(model, preprocess, tokenizer, name=name or TEACHER, embed_dim=PROJ_DIM,
                                 provenance=record, device=device)


def _read_swin_config(folder: Path, option: str | None):
    from transformers import SwinConfig

    path = Path(option).expanduser() if option else folder / "vision"
    if option and not path.is_absolute() and not path.exists():
        path = folder / option
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        if option:
            raise UsageError(f"{TEACHER}: vision_config={option!r} has no config.json (the {HF_VISION} config)")
        return default_swin_config()
    try:
        return SwinConfig.from_json_file(str(config_file))
    except Exception as e:
        raise UsageError(f"{TEACHER}: cannot read the Swin config {config_file} ({type(e).__name__}: {e})") from None
