"""Rotated test sets: the 8 right-angle rotations and flips (D4), arbitrary angles, random angles.

Conventions
-----------
- Images are numpy arrays ``(N, H, W)`` with a zero background, like :mod:`mnist_baseline.shifts`;
  outputs keep the dtype (integer dtypes are rounded and clipped after interpolation).
- Angles are in degrees, counter-clockwise as displayed (rows downwards), so ``90`` is
  ``torch.rot90(x, 1, dims=(-2, -1))``.
- D4 element ``e = 4 m + r`` is "flip the width axis ``m`` times, then ``rot90`` ``r`` times", the
  order of :func:`biocnn.models.d4.d4_transform`. It acts on the whole square canvas, so it is exact
  and keeps every digit inside the frame.
- An arbitrary angle rotates each digit's bounding-box content about its own centre (bilinear,
  zero fill), then places the rotated box so its centre stays where the digit's centre was, moved
  the least needed to keep it whole on the canvas. Angle 0 returns :func:`~mnist_baseline.shifts.centered`
  pixel for pixel; multiples of 90 degrees use ``torch.rot90`` (no interpolation).
- A digit is *rotatable* on a canvas when it fits there at every angle: the largest distance
  ``D`` between two of its ink pixels bounds the rotated ink's extent along any axis, and bilinear
  interpolation spreads it by less than ``sqrt(2)`` per side, so ``ceil(D + 2 sqrt(2)) <= canvas``.

Accuracy per angle and consistency under two random angles::

    keep = rotatable(images, canvas)
    digits, labels = images[keep], labels[keep]
    for angle in (0, 15, 30):
        ok = predict(rotate_digits(digits, angle, canvas)) == labels
    a, b = random_angles(len(digits), seed=1), random_angles(len(digits), seed=2)
    view_a, view_b = rotate_digits(digits, a, canvas), rotate_digits(digits, b, canvas)
    consistency = (predict(view_a) == predict(view_b)).mean()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biocnn.errors import BiocnnError
from biocnn.models.d4 import D4_ORDER, d4_transform
from mnist_baseline.shifts import _canvas, _check_images, bounding_boxes, centered, max_offsets, place_at

__all__ = [
    "D4_ELEMENTS",
    "d4_images",
    "d4_sets",
    "ink_diameters",
    "rotatable",
    "random_angles",
    "rotate_bilinear",
    "rotate_digits",
    "rotation_sets",
]

D4_ELEMENTS = ("identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")
"""Names of the D4 elements ``e = 0 .. 7`` (``flip`` mirrors the width axis, before the rotation)."""


def d4_images(images: np.ndarray, element: int) -> np.ndarray:
    """Apply D4 element ``element`` (0..7) to each whole frame.

    ``(N, H, W)`` → ``(N, H, W)``, or ``(N, W, H)`` for an odd number of quarter turns.
    """
    images = _check_images(images)
    if not 0 <= element < D4_ORDER:
        raise BiocnnError(f"D4 element must be in 0..{D4_ORDER - 1}, got {element}")
    return d4_transform(torch.from_numpy(np.ascontiguousarray(images)), element).numpy()


def d4_sets(images: np.ndarray, canvas: int | None = None) -> dict[str, np.ndarray]:
    """The centred digits under every D4 element: :data:`D4_ELEMENTS` → ``(N, canvas, canvas)``."""
    placed = centered(images, canvas)
    return {name: d4_images(placed, e) for e, name in enumerate(D4_ELEMENTS)}


def _boundary(ink: np.ndarray) -> np.ndarray:
    """Ink pixels with a non-ink 4-neighbour (the convex hull's vertices are among them): bool (H, W)."""
    padded = np.pad(ink, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return ink & ~inner


def ink_diameters(images: np.ndarray) -> np.ndarray:
    """Largest distance between the centres of two non-zero pixels of each image: float64 ``(N,)``.

    An all-zero image has diameter 0.
    """
    images = _check_images(images)
    out = np.zeros(len(images))
    for i, image in enumerate(images):
        points = np.argwhere(_boundary(image != 0)).astype(np.float64)  # (K, 2)
        if len(points) > 1:
            diff = points[:, None] - points[None]
            out[i] = math.sqrt(float((diff**2).sum(-1).max()))
    return out


def rotatable(images: np.ndarray, canvas: int | None = None) -> np.ndarray:
    """Which digits stay whole on a ``canvas`` x ``canvas`` frame at every angle: bool ``(N,)``."""
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    return np.ceil(ink_diameters(images) + 2 * math.sqrt(2)) <= canvas


def random_angles(n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """``n`` angles drawn uniformly in [0, 360) degrees: float64 ``(n,)``."""
    return np.random.default_rng(seed).uniform(0.0, 360.0, n)


def rotate_bilinear(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate each square image about its centre, bilinear with zero fill.

    Parameters
    ----------
    x
        ``(N, C, P, P)`` float.
    angles
        ``(N,)`` degrees, counter-clockwise as displayed (90 ≈ ``torch.rot90(x, 1, (-2, -1))``).

    Returns
    -------
    Tensor
        ``(N, C, P, P)``.
    """
    n, _, p, q = x.shape
    if p != q:
        raise BiocnnError(f"rotate_bilinear needs square images, got {p}x{q}")
    theta = torch.deg2rad(angles.to(torch.float64))
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    c = (p - 1) / 2
    dy, dx = torch.meshgrid(torch.arange(p, dtype=torch.float64) - c,
                            torch.arange(p, dtype=torch.float64) - c, indexing="ij")
    # output pixel (dy, dx) reads the source at R(-angle) (dy, dx), the inverse of rot90's map for 90
    sy = cos * dy + sin * dx + c
    sx = -sin * dy + cos * dx + c
    scale = 2 / (p - 1) if p > 1 else 1.0
    grid = torch.stack([sx * scale - 1, sy * scale - 1], -1).to(x.dtype)  # (N, P, P, 2) as (x, y)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _rotate_patches(patches: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate square patches ``(N, P, P)`` by per-image ``angles`` (N,); right angles by rot90."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(torch.float64)[:, None]
    out = torch.empty_like(x)
    quarter = np.mod(angles, 360.0) / 90.0
    right = np.isclose(quarter, np.round(quarter), rtol=0.0, atol=1e-9)
    for k in range(4):
        idx = np.flatnonzero(right & (np.round(quarter).astype(int) % 4 == k))
        if idx.size:
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    idx = np.flatnonzero(~right)
    if idx.size:
        out[idx] = rotate_bilinear(x[idx], torch.from_numpy(angles[idx]))
    result = out[:, 0].numpy()
    if np.issubdtype(patches.dtype, np.integer):
        info = np.iinfo(patches.dtype)
        result = np.clip(np.rint(result), info.min, info.max)
    return result.astype(patches.dtype)


def rotate_digits(
    images: np.ndarray, angles: float | Sequence[float] | np.ndarray, canvas: int | None = None
) -> np.ndarray:
    """Rotate each digit about its bounding-box centre and keep it whole on the canvas.

    Parameters
    ----------
    images
        ``(N, H, W)`` with a zero background.
    angles
        Degrees counter-clockwise: one for all digits or ``(N,)``.
    canvas
        Canvas side length; default ``max(H, W)``.

    Returns
    -------
    numpy.ndarray
        ``(N, canvas, canvas)``, dtype of ``images``; angle 0 gives ``centered(images, canvas)``.

    Raises
    ------
    BiocnnError
        A rotated digit is larger than the canvas (select digits with :func:`rotatable`).
    """
    images = _check_images(images)
    canvas = _canvas(images, canvas)
    n, h, w = images.shape
    angles = np.broadcast_to(np.asarray(angles, dtype=np.float64), (n,))
    boxes = bounding_boxes(images)
    sizes = boxes[:, 2:] - boxes[:, :2]
    # a square patch that holds the box content at any angle (its diagonal plus bilinear spread)
    side = math.ceil(math.hypot(h, w)) + 4
    patches = place_at(images, (side - sizes) // 2, side, boxes)
    rotated = _rotate_patches(patches, angles)
    new_boxes = bounding_boxes(rotated)
    # no ink (none to begin with, or faint ink rounded away): a 1x1 box, as nothing is left to place
    empty = ~(rotated != 0).reshape(n, -1).any(1)
    new_boxes[empty] = (side // 2, side // 2, side // 2 + 1, side // 2 + 1)
    new_sizes = new_boxes[:, 2:] - new_boxes[:, :2]
    too_big = np.flatnonzero((new_sizes > canvas).any(1))
    if too_big.size:
        i = int(too_big[0])
        raise BiocnnError(
            f"digit {i} rotated by {angles[i]:g} degrees is {new_sizes[i, 0]}x{new_sizes[i, 1]} px, "
            f"larger than the {canvas}x{canvas} canvas; keep only rotatable() digits"
        )
    # the box centre stays put (exactly, for angle 0), then moves the least needed to fit
    frame_origin = (canvas - np.asarray((h, w))) // 2
    offsets = boxes[:, :2] + frame_origin + (sizes - new_sizes) // 2
    offsets = np.clip(offsets, 0, max_offsets(new_boxes, canvas))
    return place_at(rotated, offsets, canvas, new_boxes)


def rotation_sets(
    images: np.ndarray, angles: Sequence[float], canvas: int | None = None
) -> dict[float, np.ndarray]:
    """The digits at each of ``angles``: angle → ``(N, canvas, canvas)`` (see :func:`rotate_digits`)."""
    return {float(a): rotate_digits(images, float(a), canvas) for a in angles}
