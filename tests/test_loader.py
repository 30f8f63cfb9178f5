"""The one sampler and loader: order, DDP slicing, class balance, drop_last, resumability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.data import EpochBatches, TensorData, make_loader
from biocnn.data.loader import class_weights


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 60), batch=st.integers(1, 9), world=st.integers(1, 4),
       shuffle=st.booleans(), drop_last=st.booleans(), epoch=st.integers(0, 5))
def test_ranks_take_disjoint_equal_slices_of_the_single_process_batches(
    n: int, batch: int, world: int, shuffle: bool, drop_last: bool, epoch: int
) -> None:
    """N ranks with batch B read, step by step, exactly what one process with batch N*B
    reads (over the first n // N * N images), each rank an equal, disjoint slice."""
    ranks = [EpochBatches(n, batch, shuffle=shuffle, drop_last=drop_last, seed=1, rank=r,
                          world=world) for r in range(world)]
    for s in ranks:
        s.set_epoch(epoch)
    per_rank = [list(s) for s in ranks]
    assert {len(p) for p in per_rank} == {len(ranks[0])}
    if not shuffle:  # an ordered pass (evaluation) is read whole by every rank
        kept = n // batch * batch if drop_last else n
        assert all(np.concatenate(p or [np.zeros(0)]).tolist() == list(range(kept))
                   for p in per_rank)
        return
    whole = EpochBatches(n // world * world, batch * world, shuffle=False, drop_last=drop_last)
    order = ranks[0].order().numpy()
    for step, idx in enumerate(whole):
        parts = [p[step] for p in per_rank]
        assert len({len(x) for x in parts}) == 1
        assert np.concatenate(parts).tolist() == order[idx].tolist()
    assert len(whole) == len(per_rank[0])


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochBatches(50, 8, shuffle=True, seed=3), EpochBatches(50, 8, shuffle=True, seed=3)
    b.set_epoch(2)
    list(b)
    b.set_epoch(0)  # going back to an epoch redraws its order exactly (resume)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    b.set_epoch(1)
    assert [x.tolist() for x in a] != [x.tolist() for x in b]
    assert sorted(np.concatenate(list(a)).tolist()) == list(range(50))


def test_class_balanced_weights_draw_classes_equally() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = class_weights(labels)
    torch.testing.assert_close(weights[labels == 0].sum(), weights[labels == 1].sum())
    s = EpochBatches(100, 10, weights=weights, seed=0)
    drawn = labels[torch.from_numpy(np.concatenate([np.concatenate(list(s)) for _ in range(1)]))]
    picks = []
    for epoch in range(20):
        s.set_epoch(epoch)
        picks.append(labels[torch.from_numpy(np.concatenate(list(s)))])
    frac = torch.cat(picks).float().mean().item()
    assert len(drawn) == 100 and 0.45 < frac < 0.55


def test_make_loader_on_tensor_data() -> None:
    data = TensorData(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10) % 2)
    loader = make_loader(data, 4)
    xs, ys = zip(*loader, strict=True)
    assert [len(x) for x in xs] == [4, 4, 2] and len(loader) == 3
    assert torch.cat(xs).flatten().tolist() == list(range(10))
    balanced = make_loader(data, 4, shuffle=True, balance_classes=True, drop_last=True)
    assert len(balanced) == 2 and all(len(x) == 4 for x, _ in balanced)
    with pytest.raises(ValueError, match="labels"):
        make_loader(object.__new__(_NoLabels), 4, balance_classes=True)


class _NoLabels:
    def __len__(self) -> int:
        return 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches(10, 0)
    with pytest.raises(ValueError, match="weights"):
        EpochBatches(10, 2, weights=torch.ones(3))
