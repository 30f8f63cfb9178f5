"""Recycled batch arrays: a batch's memory is reused once nothing refers to it any more.

Every batch a loader reads needs a fresh ``(B, box, box)`` float32 array (4 MB for 64
images of 128 px, 80 MB for 128 of 400 px). Fresh memory from the allocator arrives as
untouched pages, and the first write to each 4 KiB page is a page fault (~1-3 µs each,
more in a VM): for large batches that is a noticeable share of the read. :func:`take`
hands out arrays whose memory comes back to a small per-process pool when the last
array, tensor or view that uses it has been garbage-collected, so a training or
prediction loop keeps writing into the same few warm buffers.

Safety: each array is a view of a pooled buffer through a ``memoryview`` of its own
(NumPy's, made by :func:`numpy.frombuffer`); NumPy views, ``torch.from_numpy`` tensors and
their views all keep that memoryview alive, and the buffer returns to the pool only when
the memoryview is collected.
"""

from __future__ import annotations

import math
import weakref
from collections import deque

import numpy as np

__all__ = ["take", "retain"]

#: Idle buffers kept per (size, dtype); more batches alive at once are freed as usual.
KEEP = 4

_POOL: dict[tuple[int, str], deque[np.ndarray]] = {}


def take(shape: tuple[int, ...], dtype: type | np.dtype = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose memory is
    recycled after the array (and everything made from it) is gone.

    Parameters
    ----------
    shape
        Array shape, e.g. ``(B, H, W)``.
    dtype
        Element type (default float32).

    Returns
    -------
    np.ndarray
        Writeable, contents undefined (like :func:`numpy.empty`).
    """
    dt = np.dtype(dtype)
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dt)
    free = _POOL.get((count, dt.str))
    if free is None:
        free = _POOL[count, dt.str] = deque()
    try:
        buffer = free.pop()  # atomic under the GIL; callbacks may append from any thread
    except IndexError:
        buffer = np.empty(count, dt)
    flat = np.frombuffer(memoryview(buffer), dtype=dt)
    _LEASES.add(_Lease(flat.base, free, buffer))  # the memoryview every view keeps alive
    return flat.reshape(shape)


def retain(count: int) -> None:
    """Keep at most ``count`` idle buffers per size (0: free every batch at once, as
    ``biocnn predict`` does to hold a memory budget); idle buffers beyond it are freed."""
    global KEEP
    KEEP = max(0, int(count))
    for free in _POOL.values():
        while len(free) > KEEP:
            free.pop()


class _Lease(weakref.ref):
    """A weak reference to the memoryview an array was handed out through; when that is
    collected, the buffer goes back to its free list."""

    __slots__ = ("free", "buffer")
    __hash__ = object.__hash__  # by identity (a writable memoryview has no hash)
    __eq__ = object.__eq__

    def __new__(cls, lease: memoryview, free: deque[np.ndarray], buffer: np.ndarray) -> _Lease:
        return super().__new__(cls, lease, _give_back)

    def __init__(self, lease: memoryview, free: deque[np.ndarray], buffer: np.ndarray) -> None:
        super().__init__(lease, _give_back)
        self.free, self.buffer = free, buffer


#: Outstanding leases (their weak references must outlive the memoryviews they watch).
_LEASES: set[_Lease] = set()


def _give_back(ref: _Lease) -> None:
    _LEASES.discard(ref)
    if len(ref.free) < KEEP:
        ref.free.append(ref.buffer)
