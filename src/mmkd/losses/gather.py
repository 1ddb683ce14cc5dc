"""Gathering features across ranks, with gradient, for batches of unequal size.

Legend: B local batch, N global batch (sum of B over ranks), D embedding dim.

Ranks may hold different numbers of samples (unreadable samples are dropped), so each rank
pads to the largest local batch, all-gathers with autograd (the backward sums every rank's
gradient into the owner's rows), and drops the padding. With the full loss computed on every
rank and DDP averaging gradients, the update equals a single process on the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def gather_sizes(local_size: int, world_size: int, device: torch.device) -> list[int]:
    if world_size == 1:
        return [local_size]
    size = torch.tensor([local_size], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def gather_with_grad(feats_BD: torch.Tensor, rank: int, world_size: int,
                     sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's rows in rank order -> (feats_ND, offset of this rank's rows)."""
    if world_size == 1:
        return feats_BD, 0
    import torch.distributed.nn as dist_nn

    sizes = sizes or gather_sizes(feats_BD.shape[0], world_size, feats_BD.device)
    max_size = max(sizes)
    pad = max_size - feats_BD.shape[0]
    padded = torch.cat([feats_BD, feats_BD.new_zeros(pad, *feats_BD.shape[1:])]) if pad else feats_BD
    parts = dist_nn.all_gather(padded)
    gathered = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    return gathered, sum(sizes[:rank])


def gather_rows(tensors: dict[str, torch.Tensor], rank: int, world_size: int,
                sizes: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Gather several per-row tensors of one batch (all [B, ...], same B) with one collective.

    They are packed into one float32 [B, sum of widths] block, gathered with gradient
    (`gather_with_grad`), and split back into [N, ...] tensors in rank order. Student features
    keep their gradient path; constants (teacher targets, weights) simply ride along. One
    process: the tensors themselves, unchanged. `sizes`: every rank's B when the caller knows them
    (`gather_sizes`), else they are gathered here.
    """
    if world_size == 1:
        return dict(tensors)
    names = list(tensors)
    rows = tensors[names[0]].shape[0]
    flat = [tensors[k].reshape(rows, math.prod(tensors[k].shape[1:])).float() for k in names]  # [B] -> [B, 1]
    widths = [f.shape[1] for f in flat]
    block_ND, _ = gather_with_grad(torch.cat(flat, dim=1), rank, world_size, sizes)
    parts = torch.split(block_ND, widths, dim=1)
    return {k: p.reshape(p.shape[0], *tensors[k].shape[1:]) for k, p in zip(names, parts)}


def gather_ids(ids_B, world_size: int, device: torch.device):
    """Every rank's integer ids (a numpy [B] array, B may differ between ranks) in rank order, exactly (no
    float cast): a plain all-gather, no gradient. One process: the ids themselves."""
    if world_size == 1:
        return ids_B
    sizes = gather_sizes(len(ids_B), world_size, device)
    padded = torch.zeros(max(sizes), dtype=torch.long, device=device)
    padded[:len(ids_B)] = torch.as_tensor(ids_B, dtype=torch.long, device=device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu().numpy()
