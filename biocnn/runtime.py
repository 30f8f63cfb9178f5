"""Run-time plumbing: device choice, seeding, thread counts and distributed ranks."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.errors import BiocnnError

__all__ = [
    "resolve_device", "seed_everything", "DistInfo", "dist_info", "is_main_process",
    "cap_malloc_cache", "reuse_freed_memory",
]


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    ``auto`` picks CUDA when it is available (the local rank's GPU under torchrun),
    else the CPU. Asking for CUDA on a machine without it is a :class:`BiocnnError`.
    """
    device = device.lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info().local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BiocnnError(f"--device {device} requested but CUDA is not available")
        if device == "cuda":
            return torch.device("cuda", dist_info().local_rank % torch.cuda.device_count())
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise BiocnnError(f"unknown device {device!r}: use auto, cpu or cuda")


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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc mallopt parameters
_INT_MAX = 2**31 - 1


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt(param, value)`` settings; False where there is no glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError):
        return False


def cap_malloc_cache(threshold: int = 1 << 20) -> bool:
    """Keep freed batch buffers from piling up in the C heap (glibc only; else a no-op).

    glibc raises its mmap threshold after large buffers are freed, so later batches are
    carved out of a fragmented heap that grows with the number of batches. Fixing the
    threshold returns every buffer above ``threshold`` bytes to the OS when freed: measured
    peak RSS of predicting a 2 GB stack went from 1.44 GB to 0.92 GB. Returns True if set.
    """
    return _mallopt((_M_MMAP_THRESHOLD, int(threshold)))


def reuse_freed_memory() -> bool:
    """Let training reuse the memory of freed tensors instead of returning it to the OS
    (glibc only; else a no-op). Called by :func:`biocnn.engine.fit`.

    PyTorch's CPU allocator takes every activation and gradient of every step from malloc.
    glibc serves large blocks with ``mmap`` and trims its heap when they are freed, so each
    step's tensors arrive as fresh pages and every first touch of a 4 KiB page is a page
    fault. Measured for ``invariant`` at 128 px on one thread: 24,700 faults per step at
    batch 32 (11.5 → 10.1 ms per image without them) and 161,000 at batch 64 (15.3 → 10.4
    ms per image). With ``mmap`` off for allocations and no trimming, freed blocks are
    reused; the process's RSS then stays at its peak until it exits.

    Skipped (returns False) when ``BIOCNN_MALLOC=system`` or when glibc's malloc is
    already tuned through ``GLIBC_TUNABLES`` or ``MALLOC_*_`` variables. Returns True when
    applied.
    """
    if os.environ.get("BIOCNN_MALLOC", "").lower() == "system" or "GLIBC_TUNABLES" in os.environ:
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    return _mallopt((_M_TRIM_THRESHOLD, _INT_MAX), (_M_MMAP_MAX, 0))
