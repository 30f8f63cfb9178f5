"""Run-time plumbing: device choice, seeding, thread counts and distributed ranks."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.errors import OptionError

__all__ = [
    "resolve_device", "seed_everything", "DistInfo", "dist_info", "is_main_process",
]


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    ``auto`` picks CUDA when it is available (the local rank's GPU under torchrun),
    else the CPU. Asking for CUDA on a machine without it is an :class:`OptionError`.
    """
    device = device.lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info().local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError("device", device, "CUDA is not available")
        if device == "cuda":
            return torch.device("cuda", dist_info().local_rank % torch.cuda.device_count())
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise OptionError("device", repr(device), "use auto, cpu or cuda")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (seed the legacy global RNG too)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of the current process (a single process has rank 0 of world 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read the rank layout set by ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def is_main_process() -> bool:
    """True on rank 0: the only process that prints progress and writes files."""
    return dist_info().rank == 0
