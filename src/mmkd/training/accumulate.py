"""One optimiser step's gradients over its micro-batches, with every loss term over the whole step's batch.

Legend: K micro-batches per step (`train.accum_steps`), B rows of one micro-batch on this rank.

Averaging a loss per micro-batch would shrink every contrastive term (CLIP, ICL, relational KL)
to the B rows of one micro-batch: 4 x 256 would train with 256 negatives, not 1,024. Instead,
as open_clip's `--accum-freq` does:
1. each micro-batch runs forward without gradient as it arrives; its outputs are kept, its
   activations are not;
2. each micro-batch runs forward again, with gradient, and the loss is computed over the whole
   step: that micro-batch's outputs live, every other micro-batch's from the cache. Its backward
   adds dL/d(its outputs) . d(its outputs)/d(weights); the K backwards sum to the gradient of the
   loss over the whole batch (under DDP too: the loss gathers the rows of every rank, as it does
   without accumulation, and DDP reduces once, in the last backward).
Outputs that do not depend on the micro-batch (`Task.shared_outputs`: the logit scale, the ICL
temperature, the class-prompt embeddings) are live in the last pass only, so their gradient is
counted once, not K times. A micro-batch's second forward starts from the RNG state of its first,
so dropout draws the same masks. Memory grows by the cached outputs (K x B rows of features) and
the K micro-batches' inputs, which stay on the device for the second pass.
With K = 1 there is one forward, with gradient, and no cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SHARED_OUTPUTS = ("logit_scale",)


@dataclass
class MicroBatch:
    """What one micro-batch's forward and loss need, on the device."""

    images: torch.Tensor  # [B, 3, H, W]
    tokens: torch.Tensor  # [B, L]
    extra: dict[str, Any] = field(default_factory=dict)  # further forward inputs (e.g. image-only samples)
    targets: Any = None  # the task's per-row loss targets (`Task.prepare`), rows in the order of `images`
    empty: bool = False  # a blank sample stands in for a micro-batch whose samples were all unreadable
    rng: Any = None  # the RNG state its first forward started from


def concat_rows(parts: list[Any]) -> Any:
    """Concatenate per-row values along their first dim: tensors, numpy arrays, and dicts/None of them."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: concat_rows([p[k] for p in parts]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if len(parts) > 1 else first
    if isinstance(first, np.ndarray):
        return np.concatenate(parts) if len(parts) > 1 else first
    raise TypeError(f"cannot concatenate per-row values of type {type(first).__name__}")


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class StepGradients:
    """Accumulates one optimiser step: `add` each micro-batch as it arrives, then `backward` once.

    `autocast` is a zero-argument context factory (mixed precision); `no_sync` one for the passes
    whose gradients DDP must not reduce yet (`contextlib.nullcontext` without DDP).
    """

    def __init__(self, module: torch.nn.Module, task, num_micro: int, rank: int, world_size: int,
                 autocast: Callable[[], Any], no_sync: Callable[[], Any], device: torch.device):
        self.module, self.task, self.num_micro = module, task, num_micro
        self.rank, self.world_size, self.device = rank, world_size, device
        self.autocast, self.no_sync = autocast, no_sync
        self.shared = tuple(getattr(task, "shared_outputs", SHARED_OUTPUTS))
        self.micros: list[MicroBatch] = []
        self.cached: list[dict[str, torch.Tensor]] = []

    def _forward(self, micro: MicroBatch) -> dict[str, torch.Tensor]:
        with self.autocast():
            outputs = self.module(micro.images, micro.tokens, **micro.extra)
        if micro.empty:  # drop the blank sample's pair outputs (image, text, head_*)
            outputs = {k: v[:0] if is_pair_output(k) else v for k, v in outputs.items()}
        return outputs

    def add(self, micro: MicroBatch) -> None:
        """Keep the micro-batch; with accumulation, run its first (gradient-free) forward now."""
        if self.num_micro > 1:
            micro.rng = _rng_state(self.device)
            with torch.no_grad():
                self.cached.append({k: v.detach() for k, v in self._forward(micro).items()})
        self.micros.append(micro)

    def backward(self, poison_loss: bool = False) -> dict[str, torch.Tensor]:
        """Run every micro-batch's backward of the whole-step loss; returns the loss terms (whole step).

        `poison_loss` (test-only) makes the loss NaN, as a diverged step would.
        """
        assert len(self.micros) == self.num_micro, (len(self.micros), self.num_micro)
        targets = concat_rows([m.targets for m in self.micros])
        terms: dict[str, torch.Tensor] = {}
        for j, micro in enumerate(self.micros):
            last = j == self.num_micro - 1
            if micro.rng is not None:
                _set_rng_state(micro.rng, self.device)
            with contextlib.nullcontext() if last else self.no_sync():
                live = self._forward(micro)
                outputs = live if self.num_micro == 1 else self._merge(live, j, last)
                terms = self.task.losses(outputs, None, self.rank, self.world_size, targets=targets)
                if poison_loss:
                    terms["loss"] = terms["loss"] * float("nan")
                terms["loss"].backward()
        return terms

    def _merge(self, live: dict[str, torch.Tensor], j: int, last: bool) -> dict[str, torch.Tensor]:
        """The whole step's outputs: micro-batch j's rows live, the others' from the cache."""
        merged = {}
        for k, v in live.items():
            if k in self.shared:
                merged[k] = v if last else v.detach()
            else:
                merged[k] = torch.cat([c[k] for c in self.cached[:j]] + [v] + [c[k] for c in self.cached[j + 1:]])
        return merged


def is_pair_output(key: str) -> bool:
    """Outputs with one row per pair sample (the others are shared or belong to image-only samples)."""
    return key in ("image", "text") or key.startswith("head_")
