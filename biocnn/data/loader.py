"""One sampler and one loader for every dataset (in memory or lazy MRC), one process or DDP.

A dataset is anything with ``len()`` and ``batch(indices) -> (images, labels)``
(:class:`TensorData`, :class:`~biocnn.data.MrcDataset`). :class:`EpochBatches` decides, per
epoch, which images form each global batch (shuffle, class-balanced weights, drop_last) and
which slice of it this rank takes; :class:`Loader` reads those batches. The order depends
only on ``(seed, epoch)``, so a resumed run draws the same batches as an uninterrupted one.

Under DDP every rank draws the same global order and takes its own ``batch_size`` slice of
each global batch of ``batch_size * world`` images, so N ranks with batch B see exactly the
images one process with batch N * B would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["BatchDataset", "TensorData", "EpochBatches", "Loader", "class_weights", "make_loader"]


class BatchDataset(Protocol):
    """What the loader reads: ``len()`` images, read a batch at a time."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]: ...


class TensorData(Dataset):
    """Images and labels held in memory: ``images (N, C, H, W)`` float, ``labels (N,)`` long."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError("TensorData needs images (N, C, H, W) and labels (N,)")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``(images (B, C, H, W), labels (B,))`` of rows ``indices``."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.images[idx], self.labels[idx]


class EpochBatches:
    """This rank's index list for every global batch of an epoch.

    Parameters
    ----------
    n
        Images in the dataset.
    batch_size
        Images per batch on this rank.
    shuffle
        Random order (else ``0..n-1``).
    weights
        ``(n,)`` sampling weights: draw ``n`` images with replacement (class balancing).
    drop_last
        Drop a last global batch smaller than ``batch_size * world``.
    seed
        With the epoch, fixes the order.
    rank, world
        This process's rank and the number of ranks (shuffled or weighted order only; an
        ordered pass is read whole by every rank).
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool = False, weights: Tensor | None = None,
        drop_last: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be >= 1")
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} images")
        random = shuffle or weights is not None
        self.n, self.batch_size, self.shuffle, self.weights = n, batch_size, shuffle, weights
        self.drop_last, self.seed, self.epoch = drop_last, seed, 0
        self.rank, self.world = (rank, world) if random else (0, 1)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` next."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        share = self.n // self.world
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def order(self) -> Tensor:
        """``(n // world * world,)`` global order of this epoch (shared by all ranks)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return order[: self.n // self.world * self.world]  # equal shares keep ranks in step

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self.order().numpy()
        step = self.batch_size * self.world
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            if self.drop_last and len(chunk) < step:
                break
            share = len(chunk) // self.world
            yield chunk[self.rank * share : (self.rank + 1) * share]


class _Batches(Dataset):
    """``view[indices]`` is ``data.batch(indices)``, for DataLoader workers."""

    def __init__(self, data: BatchDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.data.batch(indices)


class Loader:
    """Batches ``data.batch(indices)`` for each index list of ``sampler``.

    Read in this process (``num_workers=0``, the fastest on small machines) or by a
    DataLoader's worker processes, one whole batch per call.
    """

    def __init__(self, data: BatchDataset, sampler: EpochBatches, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.data, self.sampler, self.pin_memory = data, sampler, pin_memory
        self._workers: DataLoader | None = None
        if num_workers > 0:
            self._workers = DataLoader(_Batches(data), batch_size=None, sampler=sampler,
                                       num_workers=num_workers, pin_memory=pin_memory,
                                       persistent_workers=True)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of this epoch from batch ``start`` on (a resumed epoch)."""
        if self._workers is not None and start == 0:
            yield from self._workers
            return
        for indices in itertools.islice(self.sampler, start, None):
            images, labels = self.data.batch(indices)
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels


def class_weights(labels: Tensor) -> Tensor:
    """``(N,)`` weights that draw every class equally often (``labels (N,)`` long, >= 0)."""
    counts = torch.bincount(labels)
    return (1.0 / counts.clamp(min=1).double())[labels]


def make_loader(
    data: BatchDataset | Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    balance_classes: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Loader:
    """A :class:`Loader` of ``(images (B, C, H, W), labels (B,))`` batches with ``len()``
    and ``set_epoch``; ``balance_classes`` needs ``data.labels``."""
    weights = None
    if balance_classes:
        labels = getattr(data, "labels", None)
        if labels is None:
            raise ValueError("balance_classes needs a dataset with labels")
        weights = class_weights(torch.as_tensor(np.asarray(labels)).long())
    sampler = EpochBatches(len(data), batch_size, shuffle=shuffle, weights=weights,
                           drop_last=drop_last, seed=seed, rank=rank, world=world)
    return Loader(data, sampler, num_workers=num_workers, pin_memory=pin_memory)
