"""Recycled batch arrays: memory is reused only once nothing refers to it."""

from __future__ import annotations

import gc

import numpy as np
import torch

from biocnn.data import buffers


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_memory_is_reused_after_release() -> None:
    a = buffers.take((3, 5, 7))
    assert a.shape == (3, 5, 7) and a.dtype == np.float32 and a.flags.writeable
    where = _address(a)
    del a
    assert _address(buffers.take((3, 5, 7))) == where  # the same buffer, handed out again


def test_memory_in_use_is_never_handed_out() -> None:
    a = buffers.take((4, 6))
    a[:] = 1.0
    keep = [a[1:], torch.from_numpy(a)[None, 2:], torch.from_numpy(a).numpy()[::2]]
    del a
    gc.collect()
    others = [buffers.take((4, 6)) for _ in range(3)]
    for b in others:
        b[:] = 2.0
    assert (keep[0] == 1).all() and (keep[1] == 1).all() and (keep[2] == 1).all()
    where = _address(keep[0]) - 24  # keep[0] starts one row (6 float32) in
    assert where not in {_address(b) for b in others}
    del keep
    gc.collect()
    assert _address(buffers.take((4, 6))) == where


def test_shapes_dtypes_and_empty() -> None:
    assert buffers.take((0, 4)).shape == (0, 4)
    b = buffers.take((2, 3), np.int64)
    assert b.dtype == np.int64 and b.shape == (2, 3)
    c = buffers.take((6,))  # same element count as a (2, 3) float32 request: shares the pool
    assert c.shape == (6,) and c.dtype == np.float32


def test_retain_zero_keeps_no_idle_buffers() -> None:
    a = buffers.take((5, 5))
    try:
        buffers.retain(0)
        del a
        assert all(len(free) == 0 for free in buffers._POOL.values())  # freed, not pooled
    finally:
        buffers.retain(4)
    b = buffers.take((5, 5))
    del b
    assert any(len(free) == 1 for free in buffers._POOL.values())  # pooled again
