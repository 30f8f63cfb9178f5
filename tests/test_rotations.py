"""Rotated test sets: D4 on the canvas, arbitrary angles with each digit kept whole, rotatable digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from biocnn.errors import BiocnnError
from mnist_baseline.rotations import (
    D4_ELEMENTS,
    d4_images,
    d4_sets,
    ink_diameters,
    random_angles,
    rotatable,
    rotate_bilinear,
    rotate_digits,
    rotation_sets,
)
from mnist_baseline.shifts import bounding_boxes, centered


@st.composite
def sparse_digits(draw: st.DrawFn, max_side: int = 9) -> np.ndarray:
    """A batch (N, H, W) of sparse random "digits", uint8 or float32 (some may be all zero)."""
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    values = st.sampled_from([0, 0, 0, 1, 90, 255]).map(dtype)
    return draw(arrays(dtype, (n, h, w), elements=values))


def _content(image: np.ndarray) -> np.ndarray:
    top, left, bottom, right = bounding_boxes(image[None])[0]
    return image[top:bottom, left:right]


def _centre(image: np.ndarray) -> np.ndarray:
    box = bounding_boxes(image[None])[0]
    return (box[:2] + box[2:] - 1) / 2


def test_d4_images_are_torch_rot90_and_flip() -> None:
    x = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    t = torch.from_numpy(x)
    for e, name in enumerate(D4_ELEMENTS):
        expected = torch.rot90(t.flip(-1) if name.startswith("flip") else t, e % 4, dims=(-2, -1))
        np.testing.assert_array_equal(d4_images(x, e), expected.numpy())
    assert d4_images(x, 1).shape == (2, 5, 3)
    with pytest.raises(BiocnnError, match="D4 element"):
        d4_images(x, 8)


def test_d4_sets_keep_every_digit_on_the_canvas() -> None:
    x = np.zeros((3, 6, 6), np.uint8)
    x[0, 0, 0], x[1, 2:5, 1], x[2, 1, 1:3] = 7, 200, 9
    sets = d4_sets(x, canvas=8)
    assert tuple(sets) == D4_ELEMENTS
    np.testing.assert_array_equal(sets["identity"], centered(x, 8))
    for name, images in sets.items():
        assert images.shape == (3, 8, 8), name
        np.testing.assert_array_equal(np.sort(images.reshape(3, -1)), np.sort(centered(x, 8).reshape(3, -1)))
    np.testing.assert_array_equal(sets["rot180"], centered(x, 8)[:, ::-1, ::-1])


@settings(max_examples=80, deadline=None)
@given(sparse_digits(), st.integers(0, 6))
def test_angle_zero_is_the_centred_set(images: np.ndarray, extra: int) -> None:
    canvas = max(images.shape[1:]) + extra
    out = rotate_digits(images, 0.0, canvas)
    assert out.dtype == images.dtype
    np.testing.assert_array_equal(out, centered(images, canvas))
    np.testing.assert_array_equal(rotate_digits(images, 360.0, canvas), out)


@settings(max_examples=80, deadline=None)
@given(sparse_digits(), st.sampled_from([90, 180, 270, -90, 450]))
def test_right_angles_are_exact_rot90(images: np.ndarray, angle: int) -> None:
    tight = max(images.shape[1:])  # the rotated box may have to move to stay whole
    roomy = 3 * tight  # it never has to: it turns about its own box centre
    for canvas in (tight, roomy):
        out = rotate_digits(images, float(angle), canvas)
        for i in range(len(images)):
            if not images[i].any():
                assert not out[i].any()
                continue
            np.testing.assert_array_equal(_content(out[i]), np.rot90(_content(images[i]), angle // 90))
            shift = np.abs(_centre(out[i]) - _centre(centered(images[i : i + 1], canvas)[0])).max()
            assert shift <= (0.5 if canvas == roomy else tight)


def test_bilinear_rotation_turns_like_rot90() -> None:
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64)
    quarter = rotate_bilinear(x, torch.full((3,), 90.0, dtype=torch.float64))
    torch.testing.assert_close(quarter, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(rotate_bilinear(x, torch.zeros(3, dtype=torch.float64)), x)
    with pytest.raises(BiocnnError, match="square"):
        rotate_bilinear(torch.zeros(1, 1, 4, 5), torch.zeros(1))


def test_bilinear_rotation_of_a_pixel_about_the_centre() -> None:
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 6] = 1.0  # two pixels right of the centre (4, 4)
    out = rotate_bilinear(x, torch.tensor([45.0], dtype=torch.float64))[0, 0]
    ys, xs = torch.meshgrid(torch.arange(9.0, dtype=torch.float64), torch.arange(9.0, dtype=torch.float64),
                            indexing="ij")
    mass = out.sum()
    centre = torch.stack([(out * ys).sum() / mass, (out * xs).sum() / mass])
    # counter-clockwise as displayed: right of centre moves up (row index decreases); bilinear
    # sampling smears the pixel over its neighbours, so its centroid lands within a tenth of a pixel
    expected = torch.tensor([4 - math.sqrt(2), 4 + math.sqrt(2)], dtype=torch.float64)
    torch.testing.assert_close(centre, expected, atol=0.1, rtol=0)


def test_rotated_digit_matches_a_bigger_canvas_nothing_clipped() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((5, 12, 12), np.uint8)
    x[:, 2:10, 5:7] = rng.integers(1, 255, (5, 8, 2))  # a bar of length 8: diameter ~7.3
    assert rotatable(x, 12).all()
    for angle in (15.0, 45.0, 100.0, 333.0):
        small, big = rotate_digits(x, angle, 12), rotate_digits(x, angle, 30)
        for i in range(len(x)):
            np.testing.assert_array_equal(_content(small[i]), _content(big[i]))
            assert small[i].sum() == big[i].sum()


def test_per_digit_angles_and_rotation_sets() -> None:
    x = np.zeros((3, 10, 10), np.float32)
    x[:, 3:7, 4] = 1.0
    angles = np.array([0.0, 90.0, 30.0])
    out = rotate_digits(x, angles, 10)
    for i, a in enumerate(angles):
        np.testing.assert_allclose(out[i], rotate_digits(x[i : i + 1], a, 10)[0])
    sets = rotation_sets(x, [0, 30], 10)
    assert list(sets) == [0.0, 30.0]
    np.testing.assert_array_equal(sets[30.0][2], out[2])


def test_ink_diameters_and_rotatable() -> None:
    x = np.zeros((3, 20, 20), np.uint8)
    x[0, 0, 0] = x[0, 3, 4] = 1
    x[1, 5, 5] = 3
    x[2] = 255  # full frame: diagonal 19 sqrt(2)
    np.testing.assert_allclose(ink_diameters(x), [5.0, 0.0, 19 * math.sqrt(2)])
    assert rotatable(x, 20).tolist() == [True, True, False]
    assert rotatable(x, 30).all()
    with pytest.raises(BiocnnError, match="larger than the 20x20 canvas"):
        rotate_digits(x, 45.0, 20)
    assert rotate_digits(x[:2], 45.0, 20).shape == (2, 20, 20)


@settings(max_examples=60, deadline=None)
@given(sparse_digits(max_side=8), st.lists(st.floats(-720, 720), min_size=1, max_size=4), st.integers(0, 4))
def test_rotatable_digits_fit_at_any_angle(images: np.ndarray, angles: list[float], extra: int) -> None:
    canvas = max(images.shape[1:]) + extra
    keep = rotatable(images, canvas)
    for angle in angles:
        out = rotate_digits(images[keep], angle, canvas) if keep.any() else None
        if out is not None:
            assert out.shape == (int(keep.sum()), canvas, canvas)
            # digits of a single bright pixel keep some ink at every angle
            assert (out.reshape(len(out), -1).max(1) > 0).sum() >= (images[keep] == 255).any((1, 2)).sum()


def test_faint_or_empty_digits_rotate_to_empty() -> None:
    x = np.zeros((2, 6, 6), np.uint8)
    x[1, 2, 2] = 1  # one faint pixel: bilinear at 45 degrees spreads it below 0.5, rounded to 0
    out = rotate_digits(x, 45.0, 6)
    assert out.shape == (2, 6, 6) and not out[0].any()


def test_random_angles_range_and_seed() -> None:
    a = random_angles(1000, seed=3)
    assert a.shape == (1000,) and (a >= 0).all() and (a < 360).all() and a.std() > 90
    np.testing.assert_array_equal(a, random_angles(1000, seed=3))
    assert not np.array_equal(a, random_angles(1000, seed=4))


def test_rotation_subset_keeps_the_first_rotatable_digits() -> None:
    from mnist_baseline.experiment import rotation_angles, rotation_subset

    x = np.zeros((600, 12, 12), np.uint8)
    x[:, 5, 5] = 9
    big = np.arange(0, 600, 7)
    x[big, 0, 0] = x[big, 11, 11] = 9  # diameter 11 sqrt(2): never whole on a 12 x 12 canvas at 45 degrees
    small = np.setdiff1d(np.arange(600), big)
    np.testing.assert_array_equal(rotation_subset(x, 12, 300), small[:300])
    np.testing.assert_array_equal(rotation_subset(x, 12, 0), small)
    np.testing.assert_array_equal(rotation_subset(x, 12, 10_000), small)
    assert rotation_angles(45) == [0.0, 45.0, 90.0, 135.0, 180.0] and rotation_angles(50)[-1] == 150.0
    with pytest.raises(BiocnnError, match="rotation_step"):
        rotation_angles(0)


def test_top_confusions_most_frequent_errors_first() -> None:
    from mnist_baseline.experiment import top_confusions

    labels = np.array([6, 6, 6, 9, 9, 2, 2, 1, 0])
    preds = np.array([9, 9, 6, 6, 9, 5, 2, 1, 0])
    assert top_confusions(preds, labels, 10) == [[6, 9, 2], [2, 5, 1], [9, 6, 1]]
    assert top_confusions(preds, labels, 10, k=1) == [[6, 9, 2]]
    assert top_confusions(labels, labels, 10) == []
