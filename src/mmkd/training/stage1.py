"""Stage 1: CLIP pretraining of the student with the symmetric InfoNCE loss."""

from __future__ import annotations

from typing import Any

import torch

from mmkd.config import LossConfig
from mmkd.losses.contrastive import clip_loss


class ClipForward(torch.nn.Module):
    """The student's forward for training: normalised image and text features and the logit scale.

    Wrapping the student in one module lets DDP see a single forward call per micro-batch.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        image_BD = self.model.encode_image(images, normalize=True)
        text_BD = self.model.encode_text(tokens, normalize=True)
        return {"image": image_BD.float(), "text": text_BD.float(), "logit_scale": self.model.logit_scale.exp().float()}


class ClipTask:
    name = "pretrain"

    def __init__(self, student, cfg, device, records=None):
        self.module = ClipForward(student.model)
        loss = cfg.loss if cfg is not None else LossConfig()
        self.local, self.gather_grad = loss.local, loss.gather_with_grad

    def losses(self, outputs, batch, rank: int, world_size: int, targets=None) -> dict[str, torch.Tensor]:
        terms = clip_loss(outputs["image"], outputs["text"], outputs["logit_scale"], rank, world_size,
                          local=self.local, gather_grad=self.gather_grad)
        terms["loss"] = terms["clip"]
        return terms

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def checkpoint_info(self) -> dict[str, Any]:
        return {}
