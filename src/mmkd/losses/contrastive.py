"""The CLIP task loss: symmetric InfoNCE, over the global batch or over this process's rows.

Legend: B local batch, N global batch, D embedding dim.
Inputs are L2-normalised features; `logit_scale` is the exponentiated (not log) scale.

Two options select how several processes share the loss (open_clip's `local_loss` and
`gather_with_grad`, mmkd's `--loss.local` and `--loss.gather_with_grad`):
- mmkd's default (local false, gather_with_grad true): every rank computes the full N x N loss
  over features gathered with gradient; with DDP's averaging the update equals one process on
  the global batch (mmkd.losses.gather).
- the authors' stage 1 (local true, gather_with_grad false): a rank's logits are its own B rows
  against all N columns, the columns gathered without gradient, so only the rows of the rank's
  own queries carry gradient; DDP averages the ranks' gradients. This is not the single-process
  gradient of the global batch: the key side of every logit gets none.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmkd.losses.gather import gather_sizes, gather_with_grad


def gather_without_grad(feats_BD: torch.Tensor, rank: int, world_size: int, sizes: list[int],
                        keep_own_grad: bool) -> tuple[torch.Tensor, int]:
    """Every rank's rows in rank order, gathered without gradient -> (feats_ND, offset of this rank's rows).

    `keep_own_grad`: this rank's rows are its own tensor (with gradient) instead of the gathered copy
    (open_clip's `local_loss=False` case).
    """
    max_size = max(sizes)
    pad = max_size - feats_BD.shape[0]
    padded = torch.cat([feats_BD, feats_BD.new_zeros(pad, *feats_BD.shape[1:])]) if pad else feats_BD
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.detach().contiguous())
    rows = [part[:n] for part, n in zip(parts, sizes)]
    if keep_own_grad:
        rows[rank] = feats_BD
    return torch.cat(rows), sum(sizes[:rank])


def clip_loss(image_BD: torch.Tensor, text_BD: torch.Tensor, logit_scale: torch.Tensor,
              rank: int = 0, world_size: int = 1, local: bool = False,
              gather_grad: bool = True) -> dict[str, torch.Tensor]:
    """Symmetric cross-entropy of image->text and text->image logits.

    local false: the full N x N loss over the gathered global batch on every rank. local true: this
    rank's B rows against the N gathered columns, labels at the rank's offset. `gather_grad`: the
    gathered features carry gradient (see the module docstring for what each combination computes).
    """
    if world_size == 1:
        image_ND, text_ND, offset = image_BD, text_BD, 0
    else:
        sizes = gather_sizes(image_BD.shape[0], world_size, image_BD.device)
        if gather_grad:
            image_ND, offset = gather_with_grad(image_BD, rank, world_size, sizes)
            text_ND, _ = gather_with_grad(text_BD, rank, world_size, sizes)
        else:
            image_ND, offset = gather_without_grad(image_BD, rank, world_size, sizes, keep_own_grad=not local)
            text_ND, _ = gather_without_grad(text_BD, rank, world_size, sizes, keep_own_grad=not local)
    rows = image_BD.shape[0] if local else image_ND.shape[0]
    if image_ND.shape[0] < 2 or rows == 0:  # no negatives, or no rows of its own: a zero loss, same graph
        return {"clip": (image_BD.sum() + text_BD.sum() + image_ND.sum() + text_ND.sum()) * 0.0 + logit_scale * 0.0}
    if local:
        labels = torch.arange(offset, offset + rows, device=image_BD.device)
        per_image = logit_scale * image_BD @ text_ND.T
        per_text = logit_scale * text_BD @ image_ND.T
    else:
        labels = torch.arange(rows, device=image_BD.device)
        per_image = logit_scale * image_ND @ text_ND.T
        per_text = per_image.T
    loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
    return {"clip": loss}
