"""Shifted test sets: bounding boxes, corner / centred / random / all placements."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from biocnn.errors import BiocnnError
from mnist_baseline.data import MNIST_FILES, bundled_data_dir
from mnist_baseline.idx import read_idx
from mnist_baseline.shifts import (
    CORNERS,
    FIXED_SHIFT_KINDS,
    all_placements,
    bounding_boxes,
    centered,
    corners,
    iter_placements,
    max_offsets,
    place_at,
    placement_counts,
    random_placements,
    shift_set,
)


@st.composite
def digits_and_canvas(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """A batch (N, H, W) of sparse random "digits" (uint8 or float32) and a canvas that fits them.

    The canvas ranges from the largest bounding box (possibly smaller than the frame) upwards.
    """
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    values = st.sampled_from([0, 0, 0, 1, 7, 255]).map(dtype)
    images = draw(arrays(dtype, (n, h, w), elements=values))
    boxes = bounding_boxes(images)
    smallest = int((boxes[:, 2:] - boxes[:, :2]).max())
    return images, smallest + draw(st.integers(0, 5))


def _content(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    top, left, bottom, right = box
    return image[top:bottom, left:right]


def _assert_placed(placed: np.ndarray, images: np.ndarray, offsets: np.ndarray) -> None:
    """Each digit's box content sits at its offset, nothing else is set, no pixel is lost."""
    boxes = bounding_boxes(images)
    sizes = boxes[:, 2:] - boxes[:, :2]
    for i in range(len(images)):
        oy, ox = offsets[i]
        h, w = sizes[i]
        window = placed[i, oy : oy + h, ox : ox + w]
        np.testing.assert_array_equal(window, _content(images[i], boxes[i]))
        assert placed[i].sum(dtype=np.float64) == images[i].sum(dtype=np.float64)
        if images[i].any():
            assert bounding_boxes(placed[i : i + 1])[0].tolist() == [oy, ox, oy + h, ox + w]
        else:
            assert not placed[i].any()


def test_bounding_boxes_examples() -> None:
    images = np.zeros((3, 5, 6), np.uint8)
    images[0, 1, 2] = 9
    images[0, 3, 4] = 1
    images[1, 4, 5] = 255
    boxes = bounding_boxes(images)
    assert boxes.dtype == np.int64
    assert boxes.tolist() == [[1, 2, 4, 5], [4, 5, 5, 6], [0, 0, 5, 6]]  # empty -> whole frame


@settings(max_examples=150, deadline=None)
@given(digits_and_canvas())
def test_corners_touch_corner_and_keep_every_pixel(case: tuple[np.ndarray, int]) -> None:
    images, canvas = case
    sets = corners(images, canvas)
    assert tuple(sets) == CORNERS
    room = max_offsets(bounding_boxes(images), canvas)
    zero = np.zeros_like(room[:, 0])
    expected_offsets = {
        "top_left": np.stack([zero, zero], 1),
        "top_right": np.stack([zero, room[:, 1]], 1),
        "bottom_left": np.stack([room[:, 0], zero], 1),
        "bottom_right": room,
    }
    for key, placed in sets.items():
        assert placed.shape == (len(images), canvas, canvas) and placed.dtype == images.dtype
        _assert_placed(placed, images, expected_offsets[key])


@settings(max_examples=100, deadline=None)
@given(digits_and_canvas(), st.integers(0, 2**32 - 1))
def test_random_placements_valid_and_seeded(case: tuple[np.ndarray, int], seed: int) -> None:
    images, canvas = case
    placed, offsets = random_placements(images, canvas, seed)
    assert offsets.shape == (len(images), 2)
    assert ((offsets >= 0) & (offsets <= max_offsets(bounding_boxes(images), canvas))).all()
    _assert_placed(placed, images, offsets)
    again, same_offsets = random_placements(images, canvas, np.random.default_rng(seed))
    np.testing.assert_array_equal(same_offsets, offsets)
    np.testing.assert_array_equal(again, placed)


@settings(max_examples=60, deadline=None)
@given(digits_and_canvas(), st.sampled_from([None, 1, 3]))
def test_iter_placements_visits_each_placement_once(
    case: tuple[np.ndarray, int], batch_size: int | None
) -> None:
    images, canvas = case
    boxes = bounding_boxes(images)
    room = max_offsets(boxes, canvas)
    seen: Counter[tuple[int, int, int]] = Counter()
    for step in iter_placements(images, canvas, batch_size=batch_size):
        assert 0 < len(step.index) <= (batch_size or len(images))
        offsets = np.broadcast_to(np.asarray(step.offset), (len(step.index), 2))
        _assert_placed(step.images, images[step.index], offsets)
        seen.update((int(i), *step.offset) for i in step.index)
    expected = {
        (i, oy, ox)
        for i in range(len(images))
        for oy in range(room[i, 0] + 1)
        for ox in range(room[i, 1] + 1)
    }
    assert set(seen) == expected and max(seen.values()) == 1
    counts = placement_counts(boxes, canvas)
    sizes = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_array_equal(counts, (canvas - sizes[:, 0] + 1) * (canvas - sizes[:, 1] + 1))
    assert sum(seen.values()) == counts.sum()


@settings(max_examples=60, deadline=None)
@given(digits_and_canvas())
def test_all_placements_of_one_digit(case: tuple[np.ndarray, int]) -> None:
    images, canvas = case
    image = images[0]
    offsets, placed = all_placements(image, canvas)
    h, w = (bounding_boxes(images[:1])[0, 2:] - bounding_boxes(images[:1])[0, :2]).tolist()
    assert len(offsets) == (canvas - h + 1) * (canvas - w + 1) == len(placed)
    assert len({tuple(o) for o in offsets.tolist()}) == len(offsets)
    _assert_placed(placed, np.broadcast_to(image, (len(offsets), *image.shape)), offsets)


@settings(max_examples=60, deadline=None)
@given(digits_and_canvas(), st.integers(0, 6))
def test_centered_puts_frame_in_middle(case: tuple[np.ndarray, int], extra: int) -> None:
    images, _ = case
    n, h, w = images.shape
    if h == w:
        np.testing.assert_array_equal(centered(images, h), images)
    canvas = max(h, w) + extra
    placed = centered(images, canvas)
    oy, ox = (canvas - h) // 2, (canvas - w) // 2
    np.testing.assert_array_equal(placed[:, oy : oy + h, ox : ox + w], images)
    assert placed.sum(dtype=np.float64) == images.sum(dtype=np.float64)


@pytest.fixture(scope="module")
def mnist_test_images() -> np.ndarray:
    return read_idx(bundled_data_dir() / f"{MNIST_FILES['test_images']}.gz", ndim=3)


def test_centered_is_identity_on_mnist(mnist_test_images: np.ndarray) -> None:
    np.testing.assert_array_equal(centered(mnist_test_images, 28), mnist_test_images)
    unshifted = shift_set("none", mnist_test_images)["centered"]
    np.testing.assert_array_equal(unshifted, mnist_test_images)
    big = centered(mnist_test_images[:100], 56)
    np.testing.assert_array_equal(big[:, 14:42, 14:42], mnist_test_images[:100])
    assert big.sum(dtype=np.int64) == mnist_test_images[:100].sum(dtype=np.int64)


def test_mnist_corners_and_counts(mnist_test_images: np.ndarray) -> None:
    images = mnist_test_images[:500]
    for canvas in (28, 56):
        sets = shift_set("corners", images, canvas)
        for key, placed in sets.items():
            boxes = bounding_boxes(placed)
            touches = {
                "top_left": (boxes[:, 0] == 0) & (boxes[:, 1] == 0),
                "top_right": (boxes[:, 0] == 0) & (boxes[:, 3] == canvas),
                "bottom_left": (boxes[:, 2] == canvas) & (boxes[:, 1] == 0),
                "bottom_right": (boxes[:, 2] == canvas) & (boxes[:, 3] == canvas),
            }[key]
            assert touches.all(), key
            np.testing.assert_array_equal(
                placed.reshape(len(images), -1).sum(1, dtype=np.int64),
                images.reshape(len(images), -1).sum(1, dtype=np.int64),
            )
    counts = placement_counts(bounding_boxes(images), 28)
    assert counts.min() >= 1 and counts.max() <= 29 * 29


def test_shift_set_kinds(mnist_test_images: np.ndarray) -> None:
    images = mnist_test_images[:20]
    keys = {kind: tuple(shift_set(kind, images, 40, seed=3)) for kind in FIXED_SHIFT_KINDS}
    assert keys == {"none": ("centered",), "corners": CORNERS, "random": ("random",)}
    np.testing.assert_array_equal(
        shift_set("random", images, 40, seed=3)["random"], random_placements(images, 40, 3)[0]
    )
    with pytest.raises(BiocnnError, match="unknown shift kind 'all'"):
        shift_set("all", images)


def test_random_placements_cover_every_offset() -> None:
    images = np.zeros((900, 2, 2), np.uint8)
    images[:, 0, 0] = 1  # 1x1 box: 9 placements on a 3x3 canvas
    placed, offsets = random_placements(images, 3, seed=0)
    assert len({tuple(o) for o in offsets.tolist()}) == 9
    assert (placed.reshape(900, -1).sum(1) == 1).all()


def test_errors_name_the_problem() -> None:
    images = np.zeros((2, 6, 6), np.uint8)
    images[0, 2, 2] = 1  # 1x1 box
    images[1, 1:5, 0:3] = 1  # 4x3 box
    with pytest.raises(BiocnnError, match="canvas 3 is smaller than the 4x3 box of digit 1"):
        corners(images, 3)
    with pytest.raises(BiocnnError, match=r"offset \(3, 0\) would clip digit 1"):
        place_at(images, np.array([[0, 0], [3, 0]]), canvas=6)
    with pytest.raises(BiocnnError, match=r"offset \(-1, 0\) would clip digit 0"):
        place_at(images, (-1, 0), canvas=6)
    with pytest.raises(BiocnnError, match="must be a non-empty \\(N, H, W\\) array"):
        bounding_boxes(np.zeros((6, 6)))
    with pytest.raises(BiocnnError, match="batch_size must be positive"):
        next(iter_placements(images, 6, batch_size=0))
