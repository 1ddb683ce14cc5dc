"""Per-sample seeded augmentation: a sample's random crop depends on (seed, epoch, index) only.

Random transforms draw from torch's global generator. With loader workers that stream would
depend on which worker got which batch and on how far an interrupted run had got, so a run
resumed mid-epoch would crop differently from an uninterrupted one. Seeding each sample's
transform from its own key makes augmentation a pure function of the data order, which the
resumable sampler already reproduces.
"""

from __future__ import annotations

from typing import Any

import torch


class SeededSamples(torch.utils.data.Dataset):
    """Wrap a dataset so `dataset[i]` runs under a generator seeded by (seed, epoch, i).

    `epoch` is set before each epoch's DataLoader is created (workers copy the dataset then).
    The caller's generator state is restored after each sample.
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # records, image_transform, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        key = (self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + int(index)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only, which the transforms draw from. torch.manual_seed would also reseed
            # every accelerator's generator (which fork_rng(devices=[]) does not restore) and, while CUDA,
            # XPU and MTIA are not started, record each lazy seeding call with its formatted call stack:
            # three stack walks per sample, ~10 % of a tiny stage-1 step on CPU (bench_pretrain_step).
            torch.default_generator.manual_seed(key % (2 ** 63 - 1))
            return self.dataset[index]
