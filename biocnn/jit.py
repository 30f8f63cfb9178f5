"""Shared plumbing for biocnn's numba CPU kernels: fast-math flags and a thread splitter.

Kernels are compiled with ``nogil=True`` so that :func:`run_split` can run contiguous
shares of their work on several Python threads at once (this thread takes the first).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["FASTMATH", "run_split"]

#: Let LLVM vectorise reductions (reassociate) but keep NaN/Inf semantics. numba applies a
#: kernel's flags to everything it calls, so arithmetic must stay accurate when reordered.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's worker threads (rebuilt after a fork: a child has none of its parent's)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="biocnn-jit"))
    return _POOL[2]


def run_split(
    kernel: Callable[..., Any], n: int, parts: int, args: Callable[[int, int], Sequence[Any]]
) -> None:
    """Run ``kernel(*args(start, stop))`` over ``parts`` contiguous shares of ``range(n)``.

    ``parts <= 1`` runs it once, here; otherwise the first share runs here and the others
    on this process's worker threads, and the call returns when all are done.
    """
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    shares = list(zip(bounds[:-1], bounds[1:], strict=True))
    jobs = [_pool(parts - 1).submit(kernel, *args(a, b)) for a, b in shares[1:]]
    kernel(*args(*shares[0]))
    for job in jobs:
        job.result()
