"""Shifted test sets: move each digit's bounding box to corners, random or all valid positions.

Conventions
-----------
- Images are numpy arrays (N, H, W) of any numeric dtype (uint8 MNIST or float); outputs keep the
  dtype and are (N, canvas, canvas). ``canvas`` defaults to ``max(H, W)`` and may be larger than
  the frame (e.g. 56 for 28x28 digits).
- A *box* is the bounding box of an image's non-zero pixels, ``(top, left, bottom, right)``
  half-open, so its content is ``image[top:bottom, left:right]`` and its size is
  ``(bottom - top, right - left)``. An all-zero image has the whole frame ``(0, 0, H, W)`` as
  its box (so it is placed like a full-frame digit and stays all zero).
- A *placement offset* ``(oy, ox)`` is where the box's top-left pixel lands in the canvas. For a box
  of size (h, w) the valid offsets are ``[0, canvas - h] x [0, canvas - w]``: the digit is never
  clipped, everything outside the box is zero. A canvas smaller than a box is an error.
- Shift before normalising: the background must be exactly 0 (a mean-subtracted image has no
  zero background, so its box is the whole frame and it cannot move).

Worst-case and mean accuracy over every placement, without materialising all of them at once::

    boxes = bounding_boxes(images)
    counts = placement_counts(boxes, canvas)                    # (N,) placements per digit
    always_right = np.ones(len(images), bool)
    n_right = np.zeros(len(images), np.int64)
    for p in iter_placements(images, canvas, boxes=boxes, batch_size=4096):
        ok = predict(p.images) == labels[p.index]                # p.images: (M, canvas, canvas)
        always_right[p.index] &= ok
        n_right[p.index] += ok
    worst_case_accuracy = always_right.mean()
    mean_accuracy = (n_right / counts).mean()                   # each digit weighted equally
    pooled_accuracy = n_right.sum() / counts.sum()              # each (digit, placement) equally
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from biocnn.errors import BiocnnError

__all__ = [
    "CORNERS",
    "FIXED_SHIFT_KINDS",
    "Placement",
    "bounding_boxes",
    "max_offsets",
    "placement_counts",
    "place_at",
    "corners",
    "centered",
    "random_placements",
    "iter_placements",
    "all_placements",
    "shift_set",
]

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
"""Keys of :func:`corners`, in this order."""

FIXED_SHIFT_KINDS = ("none", "corners", "random")
"""Kinds accepted by :func:`shift_set`; every placement is :func:`iter_placements`."""


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or 0 in images.shape[1:]:
        raise BiocnnError(f"images must be a non-empty (N, H, W) array, got shape {images.shape}")
    return images


def _canvas(images: np.ndarray, canvas: int | None) -> int:
    if canvas is None:
        return max(images.shape[1:])
    if canvas < 1:
        raise BiocnnError(f"canvas must be a positive size, got {canvas}")
    return int(canvas)


def bounding_boxes(images: np.ndarray) -> np.ndarray:
    """Bounding boxes of the non-zero pixels of each image.

    Parameters
    ----------
    images
        (N, H, W) array.

    Returns
    -------
    numpy.ndarray
        int64 (N, 4): ``top, left, bottom, right`` (half-open). An all-zero image gets
        ``(0, 0, H, W)``.
    """
    images = _check_images(images)
    _, h, w = images.shape
    nonzero = images != 0
    rows = nonzero.any(axis=2)  # (N, H)
    cols = nonzero.any(axis=1)  # (N, W)
    boxes = np.stack(
        [
            rows.argmax(axis=1),
            cols.argmax(axis=1),
            h - rows[:, ::-1].argmax(axis=1),
            w - cols[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    boxes[~rows.any(axis=1)] = (0, 0, h, w)
    return boxes


def max_offsets(boxes: np.ndarray, canvas: int) -> np.ndarray:
    """Largest valid placement offsets ``(canvas - h, canvas - w)`` per box.

    Parameters
    ----------
    boxes
        int (N, 4) from :func:`bounding_boxes`.
    canvas
        Canvas side length.

    Returns
    -------
    numpy.ndarray
        int64 (N, 2); digit i may be placed at any ``(oy, ox)`` in
        ``[0, out[i, 0]] x [0, out[i, 1]]``.

    Raises
    ------
    BiocnnError
        ``canvas`` is smaller than some box.
    """
    sizes = boxes[:, 2:] - boxes[:, :2]
    room = (canvas - sizes).astype(np.int64)
    too_big = np.flatnonzero((room < 0).any(axis=1))
    if too_big.size:
        i = int(too_big[0])
        raise BiocnnError(
            f"canvas {canvas} is smaller than the {sizes[i, 0]}x{sizes[i, 1]} box of digit {i} "
            f"({too_big.size} of {len(boxes)} bounding boxes do not fit)"
        )
    return room


def placement_counts(boxes: np.ndarray, canvas: int) -> np.ndarray:
    """Number of valid placements ``(canvas - h + 1) * (canvas - w + 1)`` per box: int64 (N,)."""
    room = max_offsets(boxes, canvas)
    return (room[:, 0] + 1) * (room[:, 1] + 1)


def place_at(
    images: np.ndarray,
    offsets: np.ndarray,
    canvas: int | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Place each digit's bounding-box content with its top-left corner at a given canvas offset.

    Parameters
    ----------
    images
        (N, H, W) array.
    offsets
        int (N, 2) or (2,) (same for all): ``(oy, ox)`` of each box's top-left pixel in the canvas;
        must satisfy ``0 <= offsets <= max_offsets(boxes, canvas)``.
    canvas
        Canvas side length; default ``max(H, W)``.
    boxes
        (N, 4) from :func:`bounding_boxes` of ``images``, if already computed.

    Returns
    -------
    numpy.ndarray
        (N, canvas, canvas), dtype of ``images``, zero outside the placed box.

    Raises
    ------
    BiocnnError
        Canvas smaller than a box, or an offset that would clip a digit.
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    boxes = bounding_boxes(images) if boxes is None else np.asarray(boxes)
    room = max_offsets(boxes, canvas)
    offsets = np.broadcast_to(np.asarray(offsets, dtype=np.int64), room.shape)
    bad = np.flatnonzero(((offsets < 0) | (offsets > room)).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise BiocnnError(
            f"offset {tuple(offsets[i].tolist())} would clip digit {i}: valid range is "
            f"[0, {room[i, 0]}] x [0, {room[i, 1]}] on a {canvas}x{canvas} canvas"
        )
    # Everything outside the box is zero, so placing the box = translating the whole frame by
    # `shift`: zero-pad the frames just enough, then take one canvas-sized window per image.
    n, h, w = images.shape
    shift = offsets - boxes[:, :2]  # (N, 2) frame origin in canvas coordinates
    before = np.maximum(shift.max(axis=0), 0)
    after = np.maximum((canvas - shift - (h, w)).max(axis=0), 0)
    padded = np.pad(images, ((0, 0), (before[0], after[0]), (before[1], after[1])))
    windows = sliding_window_view(padded, (canvas, canvas), axis=(1, 2))
    return windows[np.arange(n), before[0] - shift[:, 0], before[1] - shift[:, 1]]


def corners(images: np.ndarray, canvas: int | None = None) -> dict[str, np.ndarray]:
    """Each digit's box moved into each corner of the canvas.

    Parameters
    ----------
    images
        (N, H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.

    Returns
    -------
    dict[str, numpy.ndarray]
        :data:`CORNERS` -> (N, canvas, canvas): the box touches that corner of the canvas.
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    boxes = bounding_boxes(images)
    room = max_offsets(boxes, canvas)
    zero = np.zeros_like(room[:, 0])
    placements = {
        "top_left": (zero, zero),
        "top_right": (zero, room[:, 1]),
        "bottom_left": (room[:, 0], zero),
        "bottom_right": (room[:, 0], room[:, 1]),
    }
    return {
        key: place_at(images, np.stack(placements[key], axis=1), canvas, boxes) for key in CORNERS
    }


def centered(images: np.ndarray, canvas: int | None = None) -> np.ndarray:
    """The original frame, unchanged, at the centre of the canvas (the unshifted test set).

    The (H, W) frame's top-left goes to ``((canvas - H) // 2, (canvas - W) // 2)``, so for
    ``canvas == H == W`` the result equals ``images`` pixel for pixel. A canvas smaller than the
    frame is allowed only while no digit's box is clipped.

    Parameters
    ----------
    images
        (N, H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.

    Returns
    -------
    numpy.ndarray
        (N, canvas, canvas), dtype of ``images``.
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    boxes = bounding_boxes(images)
    frame_origin = (canvas - np.asarray(images.shape[1:])) // 2
    return place_at(images, boxes[:, :2] + frame_origin, canvas, boxes)


def random_placements(
    images: np.ndarray,
    canvas: int | None = None,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Each digit's box at an independent, uniformly random valid placement.

    Parameters
    ----------
    images
        (N, H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.
    seed
        Seed or numpy generator (a generator is advanced, so successive calls differ).

    Returns
    -------
    placed : numpy.ndarray
        (N, canvas, canvas), dtype of ``images``.
    offsets : numpy.ndarray
        int64 (N, 2) box top-left offsets used.
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    boxes = bounding_boxes(images)
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, max_offsets(boxes, canvas) + 1)
    return place_at(images, offsets, canvas, boxes), offsets


@dataclass(frozen=True)
class Placement:
    """One step of :func:`iter_placements`.

    Attributes
    ----------
    offset
        ``(oy, ox)`` box top-left offset shared by all digits of this step.
    index
        int64 (M,) indices into the input images of the digits placed here.
    images
        (M, canvas, canvas) those digits placed at ``offset``.
    """

    offset: tuple[int, int]
    index: np.ndarray
    images: np.ndarray


def iter_placements(
    images: np.ndarray,
    canvas: int | None = None,
    boxes: np.ndarray | None = None,
    batch_size: int | None = None,
) -> Iterator[Placement]:
    """Visit every valid placement of every digit exactly once, one offset at a time.

    Offsets ``(oy, ox)`` run row-major over ``[0, max oy] x [0, max ox]`` of the whole batch; each
    step holds the digits for which that offset is valid (small boxes have more placements than
    large ones). Digit i thus appears in exactly ``placement_counts(boxes, canvas)[i]`` steps, and
    only one step's images exist at a time (the module docstring shows worst-case and mean
    accuracy).

    Parameters
    ----------
    images
        (N, H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.
    boxes
        (N, 4) from :func:`bounding_boxes`, if already computed.
    batch_size
        Split each offset's digits into steps of at most this many; ``None`` = no split.

    Yields
    ------
    Placement
        ``offset``, ``index`` (M,) and ``images`` (M, canvas, canvas).
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    boxes = bounding_boxes(images) if boxes is None else np.asarray(boxes)
    room = max_offsets(boxes, canvas)
    if batch_size is not None and batch_size < 1:
        raise BiocnnError(f"batch_size must be positive, got {batch_size}")
    for oy in range(int(room[:, 0].max()) + 1):
        for ox in range(int(room[:, 1].max()) + 1):
            valid = np.flatnonzero((room[:, 0] >= oy) & (room[:, 1] >= ox))
            step = batch_size or max(valid.size, 1)
            for start in range(0, valid.size, step):
                index = valid[start : start + step]
                placed = place_at(images[index], (oy, ox), canvas, boxes[index])
                yield Placement(offset=(oy, ox), index=index, images=placed)


def all_placements(image: np.ndarray, canvas: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every valid placement of a single digit.

    Parameters
    ----------
    image
        (H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.

    Returns
    -------
    offsets : numpy.ndarray
        int64 (K, 2) box top-left offsets, row-major; ``K = (canvas - h + 1) * (canvas - w + 1)``.
    placed : numpy.ndarray
        (K, canvas, canvas), dtype of ``image``.
    """
    batch = _check_images(np.asarray(image)[None])
    canvas = _canvas(batch, canvas)
    box = bounding_boxes(batch)
    room = max_offsets(box, canvas)[0]
    oy, ox = np.meshgrid(np.arange(room[0] + 1), np.arange(room[1] + 1), indexing="ij")
    offsets = np.stack([oy.ravel(), ox.ravel()], axis=1)
    k = len(offsets)
    placed = place_at(
        np.broadcast_to(batch, (k, *batch.shape[1:])), offsets, canvas, np.repeat(box, k, axis=0)
    )
    return offsets, placed


def shift_set(
    kind: str,
    images: np.ndarray,
    canvas: int | None = None,
    seed: int | np.random.Generator = 0,
) -> dict[str, np.ndarray]:
    """Build a named family of fixed shifted test sets.

    Parameters
    ----------
    kind
        ``"none"`` -> ``{"centered": centered(...)}``; ``"corners"`` -> :func:`corners`;
        ``"random"`` -> ``{"random": random_placements(...)[0]}``. (Every placement: use
        :func:`iter_placements`.)
    images
        (N, H, W) array.
    canvas
        Canvas side length; default ``max(H, W)``.
    seed
        Seed or generator, used by ``"random"`` only.

    Returns
    -------
    dict[str, numpy.ndarray]
        Set name -> (N, canvas, canvas).
    """
    if kind == "none":
        return {"centered": centered(images, canvas)}
    if kind == "corners":
        return corners(images, canvas)
    if kind == "random":
        return {"random": random_placements(images, canvas, seed)[0]}
    raise BiocnnError(
        f"unknown shift kind {kind!r}; choose one of {', '.join(FIXED_SHIFT_KINDS)} "
        "(every placement is iter_placements)"
    )
