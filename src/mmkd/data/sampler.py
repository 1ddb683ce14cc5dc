"""Deterministic, resumable batching across ranks.

The order of an epoch is a permutation seeded by (seed, epoch); global batch b of the epoch is
`perm[b*G:(b+1)*G]`, and rank r takes its contiguous share. The position (epoch, micro-batch)
is all the state there is, so a resumed run reads exactly the samples an uninterrupted run
would, on any number of workers.
"""

from __future__ import annotations

import torch


class ResumableBatchSampler:
    def __init__(self, num_samples: int, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if micro_batch_size % world_size:
            raise ValueError(f"micro batch {micro_batch_size} is not divisible by world size {world_size}")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size  # across all ranks
        self.per_rank = micro_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # first micro-batch of the epoch to yield

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.micro_batch_size  # the last partial batch is dropped

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        for b in range(self.start, self.batches_per_epoch):
            batch = order[b * self.micro_batch_size:(b + 1) * self.micro_batch_size]
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()
