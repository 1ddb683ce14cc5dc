"""AdamW with open_clip's parameter groups, and the warm-up + cosine learning-rate rule.

The schedule is a pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math

import torch


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings' scale and logit scale (1-D params), as open_clip does."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(module: torch.nn.Module, optim_cfg, device_type: str) -> torch.optim.Optimizer:
    fused = bool(optim_cfg.fused and device_type == "cuda")
    return torch.optim.AdamW(param_groups(module, optim_cfg.weight_decay), lr=optim_cfg.lr,
                             betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps, fused=fused or None)


def lr_at(step: int, total_steps: int, optim_cfg) -> float:
    """Linear warm-up over `warmup_steps`, then cosine (or constant) to lr * min_lr_ratio."""
    base = optim_cfg.lr
    warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return base * (step + 1) / warmup
    if optim_cfg.schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = base * optim_cfg.min_lr_ratio
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
