"""The training loader of one epoch: the batch sampler `data.order` asks for, worker processes, and
the choice of where JPEGs are decoded.

The loop builds one `DataLoader` per epoch (`epoch_loader`) at the position it resumes from; the
sampler (`mmkd.data.sampler`) decides which samples each batch holds, so the loader itself keeps
no state worth saving.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from mmkd.data.sampler import ResumableBatchSampler, batch_sampler  # noqa: F401 - the loop's entry points
from mmkd.errors import UsageError
from mmkd.utils.signals import loader_kwargs


def check_decode(data_cfg, device_type: str = "cuda") -> None:
    """`--data.decode gpu` needs a CUDA device and the random-resized-crop augmentation; refuse it clearly
    otherwise."""
    if data_cfg.decode not in ("cpu", "gpu"):
        raise UsageError(f"--data.decode: {data_cfg.decode!r} is not allowed; choose cpu or gpu")
    if data_cfg.decode != "gpu":
        return
    if not torch.cuda.is_available() or device_type != "cuda":
        raise UsageError("--data.decode: 'gpu' decodes JPEGs with nvJPEG on a CUDA device, and this run has none "
                         "(torch.cuda.is_available() is False, or --train.device cpu); use --data.decode cpu (the "
                         "default)")
    if data_cfg.augment != "random-resized-crop":
        raise UsageError(f"--data.decode: 'gpu' crops as --data.augment random-resized-crop does; with "
                         f"--data.augment {data_cfg.augment!r} use --data.decode cpu")


def training_dataset(data_cfg, train_transform: Callable, progress: bool | None = None):
    """(dataset, index problems) of a training run: transformed images (CPU decoding), or encoded JPEGs with
    their crop boxes for `--data.decode gpu` (`mmkd.data.gpu_decode`)."""
    from mmkd.data.pairs import PairDataset

    dataset, skips = PairDataset.from_config(data_cfg, train_transform, progress)
    if data_cfg.decode == "gpu":
        from mmkd.data.gpu_decode import EncodedPairs

        dataset = EncodedPairs(dataset.records, (data_cfg.crop_scale_min, 1.0), data_cfg.max_image_pixels)
    return dataset, skips


def epoch_loader(dataset, sampler: ResumableBatchSampler, collate: Callable, num_workers: int, seed: int,
                 epoch: int, pin_memory: bool, gpu_decode: dict[str, Any] | None = None) -> Iterable:
    """The batches of `epoch` (a DataLoader), starting at the sampler's position. `gpu_decode`
    (size, mean, std, device): the batches' JPEGs are decoded on that device as they arrive.

    The loader draws its worker seed from its own generator, never from the global RNG: a run resumed
    mid-epoch creates one more loader than an uninterrupted run, and must not shift the RNG stream
    that dropout and augmentations use."""
    loader_rng = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=loader_rng,
                                         pin_memory=pin_memory, **loader_kwargs(num_workers))
    if gpu_decode is None:
        return loader
    from mmkd.data.gpu_decode import decoded

    return decoded(loader, **gpu_decode)


def gpu_decode_settings(data_cfg, preprocess_cfg: dict[str, Any], device) -> dict[str, Any] | None:
    """`epoch_loader`'s `gpu_decode` for `--data.decode gpu` (None for CPU decoding)."""
    if data_cfg.decode != "gpu":
        return None
    from mmkd.data.gpu_decode import preprocess_size

    return {"size": preprocess_size(preprocess_cfg), "mean": preprocess_cfg["mean"], "std": preprocess_cfg["std"],
            "device": device}
