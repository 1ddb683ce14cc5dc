"""The CLIP task loss: symmetric InfoNCE over the global batch.

Legend: B local batch, N global batch, D embedding dim.
Inputs are L2-normalised features; `logit_scale` is the exponentiated (not log) scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmkd.losses.gather import gather_sizes, gather_with_grad


def clip_loss(image_BD: torch.Tensor, text_BD: torch.Tensor, logit_scale: torch.Tensor,
              rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Symmetric cross-entropy of image->text and text->image logits over the gathered global batch.

    Every rank computes the same full N x N loss; see mmkd.losses.gather for why that gives
    the single-process gradient under DDP.
    """
    sizes = gather_sizes(image_BD.shape[0], world_size, image_BD.device) if world_size > 1 else None
    image_ND, _ = gather_with_grad(image_BD, rank, world_size, sizes)
    text_ND, _ = gather_with_grad(text_BD, rank, world_size, sizes)
    if image_ND.shape[0] < 2:  # no negatives (e.g. a batch of unreadable samples): a zero loss, same graph
        return {"clip": (image_ND.sum() + text_ND.sum()) * 0.0 + logit_scale * 0.0}
    logits_NN = logit_scale * image_ND @ text_ND.T
    labels = torch.arange(logits_NN.shape[0], device=logits_NN.device)
    loss = (F.cross_entropy(logits_NN, labels) + F.cross_entropy(logits_NN.T, labels)) / 2
    return {"clip": loss}
