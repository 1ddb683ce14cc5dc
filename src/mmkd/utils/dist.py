"""Distributed helpers: torchrun environment, process-group set-up, rank-0 logging."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Read rank and world size from the torchrun environment (single process when unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    info = env_dist_info()
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            import torch

            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def max_over_ranks(value: int) -> int:
    """The largest `value` of all ranks, on every rank (one all-reduce; one process: `value`)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(requested: str = "auto") -> str:
    """'auto' picks cuda when present, else cpu."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def checked_device(requested: str, flag: str = "--device") -> str:
    """`pick_device`, refusing a device this machine does not have with a usage error that names `flag`."""
    import torch

    from mmkd.errors import UsageError

    device = pick_device(requested)
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag}: {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{flag}: {requested!r} was asked for but no GPU is visible to PyTorch here; "
                             f"use {flag} cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"{flag}: {requested!r} does not exist; this machine has {count} GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif parsed.type != "cpu":
        raise UsageError(f"{flag}: {requested!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device
