"""Batched, seeded data augmentation on the training device.

One affine sampler covers integer and sub-pixel translation, in-plane rotation and flips,
with per-sample random parameters and either zero or circular (wrap-around) fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Augment", "affine_sample", "shift_images"]


def affine_sample(
    x: Tensor, angle: Tensor, shift: Tensor, flip: Tensor | None = None, fill: str = "zeros"
) -> Tensor:
    """Rotate, flip and translate each image by its own parameters (bilinear interpolation).

    Parameters
    ----------
    x
        Images ``(B, C, H, W)``.
    angle
        In-plane rotation in radians ``(B,)`` about the image centre (``pi/2`` equals
        ``torch.rot90(x, -1, (2, 3))``: clockwise as displayed with row 0 on top).
    shift
        Translation in pixels ``(B, 2)`` as ``(dy, dx)``: content moves down / right.
    flip
        Boolean ``(B,)``: mirror left-right before rotating.
    fill
        ``zeros`` (content moved out is lost, zeros move in) or ``circular`` (wrap-around).

    Returns
    -------
    Tensor
        ``(B, C, H, W)``, same dtype and device. Integer shifts with zero angle are exact.
    """
    b, c, h, w = x.shape
    dev, dt = x.device, torch.float32
    yy, xx = torch.meshgrid(
        torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # inverse map: output pixel p reads input at R^-1 (p - c - t) + c
    py = yy[None] - cy - shift[:, 0, None, None].to(dev, dt)
    px = xx[None] - cx - shift[:, 1, None, None].to(dev, dt)
    cos = torch.cos(angle).to(dev, dt)[:, None, None]
    sin = torch.sin(angle).to(dev, dt)[:, None, None]
    sy = cos * py - sin * px + cy
    sx = sin * py + cos * px
    if flip is not None:
        sx = torch.where(flip.to(dev)[:, None, None], -sx, sx)
    sx = sx + cx
    y0, x0 = torch.floor(sy), torch.floor(sx)
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    y0, x0 = y0.long(), x0.long()
    flat = x.reshape(b, c, h * w)

    def tap(yi: Tensor, xi: Tensor) -> Tensor:
        if fill == "circular":
            yi, xi = yi % h, xi % w
            valid = None
        else:
            valid = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))[:, None]
            yi, xi = yi.clamp(0, h - 1), xi.clamp(0, w - 1)
        idx = (yi * w + xi).reshape(b, 1, h * w).expand(b, c, h * w)
        v = flat.gather(2, idx).reshape(b, c, h, w)
        return v if valid is None else v * valid

    out = (
        tap(y0, x0) * (1 - fy) * (1 - fx)
        + tap(y0, x0 + 1) * (1 - fy) * fx
        + tap(y0 + 1, x0) * fy * (1 - fx)
        + tap(y0 + 1, x0 + 1) * fy * fx
    )
    return out.to(x.dtype)


def shift_images(x: Tensor, shift: Tensor, fill: str = "zeros") -> Tensor:
    """Translate every image of ``(B, C, H, W)`` by ``shift (B, 2)`` = ``(dy, dx)`` pixels."""
    return affine_sample(x, torch.zeros(x.shape[0]), shift, None, fill)


@dataclass
class Augment:
    """Random translation, rotation and flips drawn per sample.

    Parameters
    ----------
    max_shift
        Largest translation in pixels along each axis (uniform in ``[-max_shift, max_shift]``).
    subpixel
        Draw real-valued shifts (bilinear) instead of integers.
    rotate
        Random in-plane rotation, uniform over 0–360°.
    flip
        Random left-right mirror (with ``rotate`` this covers all in-plane flips).
    fill
        ``zeros`` or ``circular``.

    Call ``aug(x, generator)`` on a batch ``(B, C, H, W)``; parameters are drawn on the CPU
    from ``generator`` (reproducible on any device) and applied on ``x``'s device.
    """

    max_shift: float = 0.0
    subpixel: bool = True
    rotate: bool = False
    flip: bool = False
    fill: str = "zeros"

    @property
    def active(self) -> bool:
        return self.max_shift > 0 or self.rotate or self.flip

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.active:
            return x
        b = x.shape[0]
        u = torch.rand(b, 2, generator=generator)
        if self.subpixel:
            shift = (2 * u - 1) * self.max_shift
        else:
            m = int(self.max_shift)
            shift = torch.floor(u * (2 * m + 1)) - m
        angle = (
            torch.rand(b, generator=generator) * 2 * math.pi if self.rotate else torch.zeros(b)
        )
        flip = torch.rand(b, generator=generator) < 0.5 if self.flip else None
        return affine_sample(x, angle, shift, flip, self.fill)
