"""Batched augmentation: exact integer shifts, rotations, flips, seeding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.augment import Augment, affine_sample, shift_images


@settings(max_examples=30, deadline=None)
@given(dy=st.integers(-9, 9), dx=st.integers(-9, 9), h=st.integers(4, 20), w=st.integers(4, 20))
def test_integer_circular_shift_equals_roll(dy: int, dx: int, h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w)
    out = shift_images(x, torch.tensor([[dy, dx], [0, 0]], dtype=torch.float32), fill="circular")
    assert torch.allclose(out[0], torch.roll(x[0], (dy, dx), (1, 2)), atol=1e-5)
    assert torch.allclose(out[1], x[1])


def test_zero_fill_shift_moves_content_and_zero_fills() -> None:
    x = torch.rand(1, 1, 8, 8) + 1
    out = shift_images(x, torch.tensor([[2.0, -3.0]]))
    assert torch.allclose(out[0, 0, 2:, :5], x[0, 0, :6, 3:])
    assert out[0, 0, :2].abs().sum() == 0 and out[0, 0, :, 5:].abs().sum() == 0


def test_quarter_turn_and_flip_are_exact() -> None:
    x = torch.randn(2, 1, 9, 9)
    rot = affine_sample(x, torch.full((2,), math.pi / 2), torch.zeros(2, 2))
    assert torch.allclose(rot, torch.rot90(x, -1, (2, 3)), atol=1e-5)
    flip = affine_sample(x, torch.zeros(2), torch.zeros(2, 2), torch.tensor([True, False]))
    assert torch.allclose(flip[0], x[0].flip(-1)) and torch.allclose(flip[1], x[1])


def test_subpixel_shift_preserves_mass_of_interior_content() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 6:10, 6:10] = 1.0
    out = shift_images(x, torch.tensor([[0.5, -1.25]]))
    assert math.isclose(out.sum().item(), 16.0, rel_tol=1e-5)


def test_augment_is_seeded_and_per_sample() -> None:
    aug = Augment(max_shift=4, rotate=True, flip=True)
    x = torch.randn(6, 1, 16, 16)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = x[:1].expand(6, -1, -1, -1)
    d = aug(same, torch.Generator().manual_seed(3))
    assert not torch.allclose(d[0], d[1])  # each sample gets its own parameters
    assert Augment()(x) is x  # nothing to do: no copy


def test_integer_mode_draws_integers() -> None:
    aug = Augment(max_shift=3, subpixel=False, fill="circular")
    x = torch.randn(32, 1, 12, 12)
    out = aug(x, torch.Generator().manual_seed(0))
    # an integer circular shift only permutes pixels
    assert torch.allclose(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values, atol=1e-5)


def test_fourier_rotate_matches_bilinear_on_smooth_images_and_keeps_noise() -> None:
    import math

    from biocnn.augment import affine_sample, fourier_rotate

    n = 48
    yy, xx = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    blob = torch.exp(-((yy - 15) ** 2 / 30 + (xx - 30) ** 2 / 12))[None, None].repeat(5, 1, 1, 1)
    angle = torch.tensor([0.0, 0.3, -0.7, math.pi / 2, 3.5])
    got = fourier_rotate(blob, angle)
    torch.testing.assert_close(got[3], torch.rot90(blob[3], -1, (1, 2)))  # quarter turns exact
    assert (got - affine_sample(blob, angle, torch.zeros(5, 2))).abs().max() < 0.05
    noise = torch.randn(8, 1, n, n, generator=torch.Generator().manual_seed(0))
    turned = torch.full((8,), 0.6)
    # bilinear sampling halves the noise variance at some positions; shears keep it
    assert abs(fourier_rotate(noise, turned).std() / noise.std() - 1) < 0.05
    assert affine_sample(noise, turned, torch.zeros(8, 2), fill="circular").std() < 0.85 * noise.std()
    odd = torch.randn(2, 1, 33, 33, generator=torch.Generator().manual_seed(1))  # no Nyquist term
    back = fourier_rotate(fourier_rotate(odd, torch.full((2,), 0.4)), torch.full((2,), -0.4))
    torch.testing.assert_close(back, odd, atol=1e-4, rtol=0)


def test_fourier_augment_is_seeded_and_rejects_unknown_interpolation() -> None:
    x = torch.randn(4, 1, 16, 16)
    aug = Augment(max_shift=2.5, rotate=True, flip=True, interp="fourier")
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    with pytest.raises(ValueError, match="interp"):
        Augment(interp="cubic")


@pytest.mark.parametrize("size", [15, 16])
def test_fourier_augment_fills_what_a_shift_brings_in_like_bilinear(size: int) -> None:
    from biocnn.augment import fourier_shift, shift_images

    # band-limited (no Nyquist term), so whole-pixel Fourier moves are exact at even sizes too
    x = fourier_shift(torch.randn(6, 2, size, size), torch.zeros(6, 2))
    for fill in ("zeros", "circular"):
        # whole-pixel moves: bilinear sampling is exact, so both paths must agree
        aug = Augment(max_shift=4, subpixel=False, fill=fill, interp="fourier")
        got = aug(x, torch.Generator().manual_seed(1))
        u = torch.rand(6, 2, generator=torch.Generator().manual_seed(1))
        shift = torch.floor(u * 9) - 4
        torch.testing.assert_close(got, shift_images(x, shift, fill), atol=1e-4, rtol=0)
    # sub-pixel: rows/columns whose source lies past the edge are zero, the rest is the move
    from biocnn.augment import _inside

    mask = _inside(torch.tensor([[2.5, -1.25], [-0.3, 0.0]]), size, size)[:, 0]
    assert mask[0, :3].sum() == 0 and mask[0, 3:, : size - 2].all() and mask[0, :, size - 2 :].sum() == 0
    assert mask[1, -1].sum() == 0 and mask[1, :-1].all()
    got = Augment(max_shift=3.5, fill="zeros", interp="fourier")(x, torch.Generator().manual_seed(2))
    drawn = (2 * torch.rand(6, 2, generator=torch.Generator().manual_seed(2)) - 1) * 3.5
    torch.testing.assert_close(got, fourier_shift(x, drawn) * _inside(drawn, size, size))
    with pytest.raises(ValueError, match="fill"):
        Augment(fill="zero")
