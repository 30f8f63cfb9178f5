"""Run-time plumbing: device choice, seeding, thread counts and distributed ranks."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.errors import OptionError

__all__ = [
    "resolve_device", "seed_everything", "DistInfo", "dist_info", "is_main_process",
    "reuse_freed_memory",
    "freed_memory_reused",
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


def _mallopt(*settings: tuple[int, int]) -> bool:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError):
        return False


# glibc mallopt parameters and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_DEFAULT, _MMAP_MAX_DEFAULT = 128 * 1024, 65536
_REUSE_DEPTH = 0  # open freed_memory_reused blocks that applied the setting


def reuse_freed_memory() -> bool:
    """Let a CPU training process reuse freed memory instead of returning it to the OS
    (glibc only; elsewhere a no-op); :func:`freed_memory_reused` undoes it afterwards.

    PyTorch's CPU allocator takes every activation and gradient of every step from malloc;
    glibc serves large blocks with ``mmap`` and trims its heap when they are freed, so each
    step's tensors arrive as fresh pages and every first touch of a page is a fault. With
    ``mmap`` off for allocations and no trimming, freed blocks are reused (1.66x faster
    steps for ``invariant_m`` at 128 px, BENCHMARKS.md); memory held stays at the step's
    peak. Skipped (returns False) with ``BIOCNN_MALLOC=system`` or when malloc is already
    tuned through ``GLIBC_TUNABLES`` or ``MALLOC_*_`` variables.
    """
    if os.environ.get("BIOCNN_MALLOC", "").lower() == "system" or "GLIBC_TUNABLES" in os.environ:
        return False
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    return _mallopt((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_MAX, 0))


@contextlib.contextmanager
def freed_memory_reused(enabled: bool = True) -> Iterator[bool]:
    """:func:`reuse_freed_memory` for the duration of a block (training), then glibc's
    defaults again, so prediction later in the same process (a notebook) is not affected."""
    global _REUSE_DEPTH
    if _REUSE_DEPTH:  # nested (fit inside an experiment): the outermost block decides
        yield True
        return
    applied = enabled and reuse_freed_memory()
    _REUSE_DEPTH += applied
    try:
        yield applied
    finally:
        if applied:
            _REUSE_DEPTH -= 1
            _mallopt((_M_MMAP_MAX, _MMAP_MAX_DEFAULT), (_M_TRIM_THRESHOLD, _TRIM_DEFAULT))
