"""Small layers: BlurPool, APS, global pooling."""

from __future__ import annotations

import pytest
import torch

from biocnn.models.layers import APS2d, BlurPool2d, GlobalPool2d, MaxPoolStride1, make_downsample


def test_blurpool_shapes_and_dc_gain() -> None:
    x = torch.ones(2, 3, 10, 11)
    y = BlurPool2d(3, filt_size=3, stride=2, padding="circular")(x)
    assert y.shape == (2, 3, 5, 6)
    assert torch.allclose(y, torch.ones_like(y))  # binomial filter sums to one


def test_blurpool_circular_is_equivariant_to_even_shifts() -> None:
    x = torch.randn(1, 2, 16, 16)
    pool = BlurPool2d(2, 3, 2, "circular")
    assert torch.allclose(pool(torch.roll(x, (2, 4), (2, 3))), torch.roll(pool(x), (1, 2), (2, 3)), atol=1e-6)


def test_aps_picks_the_largest_polyphase_component() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 3] = 5.0  # lives in component (1, 1)
    y = APS2d()(x)
    assert y.shape == (1, 1, 2, 2)
    assert y.abs().sum() == 5.0


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (3, 5)])
def test_aps_is_equivariant_up_to_a_shift(shift: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 12, 12)
    a, b = APS2d()(x), APS2d()(torch.roll(x, shift, (2, 3)))
    # same multiset of values per sample: the output is a circular shift of the other
    assert torch.allclose(a.flatten(1).sort(1).values, b.flatten(1).sort(1).values)


def test_aps_passes_odd_sizes_through() -> None:
    x = torch.randn(1, 2, 7, 7)
    assert torch.equal(APS2d()(x), x)


def test_global_pool_modes() -> None:
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert torch.equal(GlobalPool2d("avg")(x), torch.tensor([[1.5, 5.5]]))
    assert torch.equal(GlobalPool2d("max")(x), torch.tensor([[3.0, 7.0]]))
    assert GlobalPool2d("avgmax")(x).shape == (1, 4)
    with pytest.raises(ValueError):
        GlobalPool2d("median")


def test_max_filter_circular_wraps() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    y = MaxPoolStride1("circular")(x)
    assert y.shape == x.shape
    assert y[0, 0, 3, 3] == 1.0 and y[0, 0, 0, 0] == 1.0


def test_make_downsample_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="downsample"):
        make_downsample("strided", 4)
