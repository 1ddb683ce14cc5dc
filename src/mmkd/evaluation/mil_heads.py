"""Gated attention MIL (ABMIL, Ilse et al. 2018) over bags of patch embeddings, and its training loop.

Legend: S bags (slides), B bags in a batch, N patches (padded), D embedding dim, H hidden dim,
A attention dim, O outputs (classes, time bins, or 1 risk score).

A bag's patches h_n are embedded (Linear D->H, ReLU, dropout) and pooled with gated attention
    a_n = softmax_n( w^T (tanh(V h_n) * sigmoid(U h_n)) ),   z = sum_n a_n h_n,
and a linear layer maps z to O outputs. Bags of different sizes are padded and masked, so a
batch of bags runs as one tensor program. The same model serves classification (mil.py) and
survival (survival.py); only the loss differs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


SMALL_PROBLEM = 5_000_000  # input numbers below which one CPU thread beats several


@contextlib.contextmanager
def single_threaded(num_inputs: int = 0) -> Iterator[None]:
    """Run torch on one CPU thread inside the block when the training data holds at most
    SMALL_PROBLEM numbers. Small heads train many times faster that way: intra-op threads only
    add synchronisation, and on a busy machine they oversubscribe it (measured 20x here)."""
    if num_inputs > SMALL_PROBLEM:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling: feats_BNH, mask_BN (True = real patch) -> pooled_BH, attention_BN (sums to 1)."""

    def __init__(self, in_dim: int, attn_dim: int):
        super().__init__()
        self.tanh_branch = nn.Linear(in_dim, attn_dim)  # V
        self.gate_branch = nn.Linear(in_dim, attn_dim)  # U
        self.score = nn.Linear(attn_dim, 1)  # w

    def forward(self, feats_BNH: torch.Tensor, mask_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gated_BNA = torch.tanh(self.tanh_branch(feats_BNH)) * torch.sigmoid(self.gate_branch(feats_BNH))
        scores_BN = self.score(gated_BNA).squeeze(-1).masked_fill(~mask_BN, float("-inf"))
        attention_BN = torch.softmax(scores_BN, dim=1)
        return torch.einsum("bn,bnh->bh", attention_BN, feats_BNH), attention_BN


class GatedABMIL(nn.Module):
    """Bag -> O outputs. forward(feats_BND, mask_BN) -> (outputs_BO, attention_BN)."""

    def __init__(self, in_dim: int, num_outputs: int, hidden_dim: int = 128, attn_dim: int = 64, dropout: float = 0.25):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.pool = GatedAttentionPool(hidden_dim, attn_dim)
        self.head = nn.Linear(hidden_dim, num_outputs)

    def forward(self, feats_BND: torch.Tensor, mask_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_BH, attention_BN = self.pool(self.embed(feats_BND), mask_BN)
        return self.head(pooled_BH), attention_BN


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags [N_i, D] into feats_BND (zero padded) and mask_BN (True on real patches)."""
    assert bags and all(len(b) > 0 for b in bags), "every bag needs at least one patch"
    num_max = max(len(b) for b in bags)
    feats_BND = torch.zeros(len(bags), num_max, bags[0].shape[1])
    mask_BN = torch.zeros(len(bags), num_max, dtype=torch.bool)
    for i, bag in enumerate(bags):
        feats_BND[i, :len(bag)] = bag.float()
        mask_BN[i, :len(bag)] = True
    return feats_BND, mask_BN


@dataclass
class MILTrainConfig:
    """Training settings of a MIL head. Small defaults: a few seconds on CPU for ~100 slides."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden_dim: int = 128
    attn_dim: int = 64
    dropout: float = 0.25

    @classmethod
    def from_options(cls, options: dict, where: str = "dataset") -> MILTrainConfig:
        """Settings from catalog options prefixed `mil_` (e.g. `mil_epochs: 60`); bad values reported at once."""
        from mmkd.evaluation.head_options import head_config

        return head_config(cls, options, lambda name: f"mil_{name}", where)


def fit_bag_model(bags: list[torch.Tensor], num_outputs: int, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  config: MILTrainConfig, seed: int, full_batch: bool = False,
                  output_bias: torch.Tensor | None = None) -> GatedABMIL:
    """Train a GatedABMIL on `bags` and return it in eval mode.

    `loss_fn(outputs_BO, index_B)` gets the outputs of a batch and the bags' indices into `bags`
    (so it can look up labels, times, events). `full_batch=True` uses all bags in every step
    (the Cox partial likelihood needs whole risk sets). `output_bias` [O] starts the output layer
    at a population baseline (e.g. the marginal hazards), so training spends its steps on what
    distinguishes the bags. Deterministic for a given seed.
    """
    with single_threaded(sum(len(b) for b in bags) * bags[0].shape[1]):
        return _fit(bags, num_outputs, loss_fn, config, seed, full_batch, output_bias)


def _fit(bags, num_outputs, loss_fn, config, seed, full_batch, output_bias) -> GatedABMIL:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initial weights and dropout
    model = GatedABMIL(bags[0].shape[1], num_outputs, config.hidden_dim, config.attn_dim, config.dropout)
    if output_bias is not None:
        with torch.no_grad():
            model.head.bias.copy_(output_bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch_size = len(bags) if full_batch else config.batch_size
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(bags), generator=generator)
        for start in range(0, len(bags), batch_size):
            index_B = order[start:start + batch_size]
            if len(index_B) < 2 and len(bags) >= 2:
                continue  # a single-bag tail step adds noise, and a Cox risk set of one has no information
            feats_BND, mask_BN = pad_bags([bags[i] for i in index_B])
            outputs_BO, _ = model(feats_BND, mask_BN)
            loss = loss_fn(outputs_BO, index_B)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def predict_bags(model: GatedABMIL, bags: list[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """[S, O] outputs of `model` (eval mode) for every bag, in order."""
    with single_threaded(sum(len(b) for b in bags) * bags[0].shape[1]):
        outs = [model(*pad_bags(bags[i:i + batch_size]))[0] for i in range(0, len(bags), batch_size)]
    return torch.cat(outs).float()


def cross_entropy_loss(labels_S: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss_fn for fit_bag_model: cross-entropy of the batch's logits against labels_S[index]."""
    return lambda logits_BC, index_B: F.cross_entropy(logits_BC, labels_S[index_B])
