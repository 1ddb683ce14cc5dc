"""Mixed precision of training and validation forwards."""

from __future__ import annotations

import contextlib

import torch


def autocast_context(device_type: str, precision: str):
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
