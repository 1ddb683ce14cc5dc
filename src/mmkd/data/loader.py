"""The training loader of one epoch: the batch sampler `data.order` asks for, worker processes, and
the choice of where JPEGs are decoded.

The loop builds one `DataLoader` per epoch (`epoch_loader`) at the position it resumes from; the
sampler (`mmkd.data.sampler`) decides which samples each batch holds, so the loader itself keeps
no state worth saving.
"""

from __future__ import annotations

from typing import Callable

import torch

from mmkd.data.sampler import ResumableBatchSampler, batch_sampler  # noqa: F401 - the loop's entry points
from mmkd.errors import UsageError


def check_decode(data_cfg) -> None:
    """`--data.decode gpu` needs a CUDA device; refuse it clearly where there is none."""
    if data_cfg.decode not in ("cpu", "gpu"):
        raise UsageError(f"--data.decode: {data_cfg.decode!r} is not allowed; choose cpu or gpu")
    if data_cfg.decode == "gpu" and not torch.cuda.is_available():
        raise UsageError("--data.decode: 'gpu' decodes JPEGs with nvJPEG on a CUDA device, and this machine has "
                         "none (torch.cuda.is_available() is False); use --data.decode cpu (the default)")


def epoch_loader(dataset, sampler: ResumableBatchSampler, collate: Callable, num_workers: int, seed: int,
                 epoch: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """The DataLoader of `epoch`, starting at the sampler's position.

    The loader draws its worker seed from its own generator, never from the global RNG: a run resumed
    mid-epoch creates one more loader than an uninterrupted run, and must not shift the RNG stream
    that dropout and augmentations use."""
    loader_rng = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                       generator=loader_rng, pin_memory=pin_memory)
