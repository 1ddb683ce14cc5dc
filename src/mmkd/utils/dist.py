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
