"""Loaders that read whole batches at once (used by the engine and every task).

A dataset with a ``batch(indices) -> (images, labels)`` method (:class:`MrcDataset`) is
read one batch per call -- images of one file are then gathered and normalised together --
instead of calling ``__getitem__`` per image and stacking the results: in this process by
a :class:`BatchLoader` (no DataLoader machinery: measured ~15 % faster) or, with workers,
by a DataLoader over whole-batch index lists. Any other dataset gets a plain DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = ["BatchLoader", "make_loader", "set_epoch"]

#: With ``read_ahead`` and several torch threads, a :class:`BatchLoader` reads several
#: batches in one call while they add up to at most this many bytes: each call hands work
#: to the reader's threads once, and waking a thread costs ~50-100 µs in a VM (as long as
#: reading 10-20 images of 128 px). Measured on 2 threads, batches of 64 x 128²: 0.55x the
#: raw copy speed batch by batch, 0.62-0.67x reading 4 batches per call, 0.70-0.74x
#: reading 8 (32 MiB). On one thread there is nothing to amortise and the larger output
#: leaves the cache (0.46x instead of 0.51x), so one thread reads batch by batch.
READ_AHEAD_BYTES = 32 << 20
#: ... and at most this many batches.
MAX_READ_AHEAD = 8


class _WholeBatches(Dataset):
    """``view[indices]`` is ``data.batch(indices)``: one call per batch."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(indices)


class BatchLoader:
    """Batches ``data.batch(indices)`` for each index list of ``batch_sampler``, read in
    this process; ``len()`` is the number of batches.

    With ``read_ahead``, when ``data`` has an ``image_nbytes`` attribute (bytes of one
    output image) and torch runs several threads, up to :data:`MAX_READ_AHEAD`
    consecutive batches totalling at most :data:`READ_AHEAD_BYTES` are read in one
    ``data.batch`` call and handed out one by one (same batches, same order).

    Attributes
    ----------
    sampler
        The batch sampler (:func:`set_epoch` reaches the sampler inside it).
    """

    def __init__(self, data: Any, batch_sampler: BatchSampler, pin_memory: bool = False,
                 read_ahead: bool = False) -> None:
        self.dataset, self.sampler, self.pin_memory = data, batch_sampler, pin_memory
        per_batch = int(getattr(data, "image_nbytes", 0)) * int(batch_sampler.batch_size or 1)
        self.ahead = (max(1, min(MAX_READ_AHEAD, READ_AHEAD_BYTES // per_batch))
                      if read_ahead and per_batch > 0 else 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.sampler)
        ahead = self.ahead if torch.get_num_threads() > 1 else 1
        while group := list(islice(batches, ahead)):
            images, labels = self.dataset.batch(np.concatenate(group) if len(group) > 1
                                                else group[0])
            start = 0
            for indices in group:
                stop = start + len(indices)
                batch = images[start:stop], labels[start:stop]
                start = stop
                if self.pin_memory:
                    batch = batch[0].pin_memory(), batch[1].pin_memory()
                yield batch


def make_loader(
    data: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    read_ahead: bool = False,
) -> DataLoader | BatchLoader:
    """An iterable of ``(images (B, C, H, W), labels (B,))`` batches with ``len()``.

    Parameters
    ----------
    data
        A dataset of ``(image, label)``; one with a ``batch`` method is read a batch at a time.
    batch_size
        Images per batch.
    shuffle
        Random order (ignored when ``sampler`` is given).
    sampler
        Image order (e.g. a ``DistributedSampler`` or ``WeightedRandomSampler``).
    generator
        Seeds the shuffle and the workers' base seed.
    num_workers
        Worker processes (0 = read in this process); workers are kept between epochs.
    pin_memory
        Page-lock batches for fast copies to a GPU.
    drop_last
        Drop a last, smaller batch.
    read_ahead
        With 0 workers, read several batches per call (see :class:`BatchLoader`; faster
        on several threads, a few more batches in memory: off where memory is budgeted).
    """
    if sampler is None:
        sampler = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
        "generator": generator,
    }
    if callable(getattr(data, "batch", None)):
        batches = BatchSampler(sampler, batch_size, drop_last)
        if num_workers == 0:
            return BatchLoader(data, batches, pin_memory, read_ahead)
        return DataLoader(_WholeBatches(data), batch_size=None, sampler=batches, **common)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)


def set_epoch(loader: DataLoader | BatchLoader, epoch: int) -> None:
    """Tell a loader's ``DistributedSampler`` (or any sampler with ``set_epoch``) the epoch,
    so each epoch draws a new order; a no-op for other samplers."""
    sampler = getattr(loader, "sampler", None)
    sampler = getattr(sampler, "sampler", sampler)  # inside a BatchSampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
