"""One protocol for every CLIP we encode with: teachers, students, evaluated models.

Legend: B batch, D embedding dim.

`encode_image(pixels_B3HW) -> feats_BD` and `encode_text(texts) -> feats_BD` return float32,
L2-normalised embeddings and run without gradients. `preprocess` maps a PIL RGB image to the
model's own input tensor (its size, crop, mean/std); `tokenizer` is the model's own. A live
model and a precomputed one (read from a feature store) satisfy the same protocol.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class ClipEncoder(Protocol):
    name: str
    embed_dim: int
    tokenizer: Any
    provenance: dict[str, Any]

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]: ...  # read-only: an attribute or a method

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...


class OpenClipEncoder:
    """An open_clip model (CLIP or CustomTextCLIP) behind the ClipEncoder protocol."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Any, name: str = "open_clip",
                 provenance: dict[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.provenance = dict(provenance or {})
        with torch.no_grad():
            self.embed_dim = int(self._image_dim())

    def _image_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[-1]
        size = getattr(self.model.visual, "image_size", (224, 224))
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return self.model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1]

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1)
