"""Batched, seeded data augmentation on the training device.

One affine sampler covers integer and sub-pixel translation, in-plane rotation and flips,
with per-sample random parameters and either zero or circular (wrap-around) fill;
:func:`fourier_shift` moves images by sub-pixel amounts without interpolation blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from biocnn.config import FILLS, INTERPOLATIONS

__all__ = ["INTERPOLATIONS", "Augment", "affine_sample", "fourier_rotate", "fourier_shift", "shift_images"]


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


def _shift_matrices(shift: Tensor, n: int) -> Tensor:
    """Circulant band-limited (Fourier) shift operators: ``(B,)`` shifts → ``(B, n, n)``.

    ``S @ v`` moves a length-``n`` signal by ``shift`` samples as a phase ramp on its DFT
    would. The Nyquist term of even ``n`` is dropped: a real signal has no sub-pixel
    shift of it, and without it ``S(a) S(b) = S(a + b)`` holds exactly. Built from the
    Dirichlet kernel with plain float32 ops (no FFT) so it runs on any device and exports
    to ONNX.
    """
    i = torch.arange(n, device=shift.device, dtype=torch.float32)
    d = (i[:, None] - i[None, :])[None] - shift.float()[:, None, None]  # (B, n, n)
    d = torch.remainder(d + n / 2, n) - n / 2  # the kernel has period n: keep theta in [-pi, pi)
    theta = 2 * torch.pi * d / n
    m = (n - 1) // 2  # frequencies -m..m
    half = torch.sin(theta / 2)
    small = half.abs() < 1e-7
    kernel = torch.where(small, torch.full_like(theta, 2 * m + 1),
                         torch.sin((m + 0.5) * theta) / torch.where(small, torch.ones_like(half), half))
    return kernel / n


def fourier_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Move each image by its own (sub-pixel) amount, circularly and band-limited.

    ``x``: ``(B, C, H, W)``; ``shift``: ``(B, 2)`` as ``(dy, dx)`` in pixels, content moves
    down / right. Equal to a phase ramp on the 2D DFT (Nyquist terms of even sizes
    removed); no blur, unlike bilinear sampling.
    """
    h, w = x.shape[-2:]
    shift = shift.to(x.device)
    sy = _shift_matrices(shift[:, 0], h).to(x.dtype)[:, None]  # (B, 1, H, H)
    sx = _shift_matrices(shift[:, 1], w).to(x.dtype)[:, None]  # (B, 1, W, W)
    return sy @ x @ sx.transpose(-1, -2)


def _shear(x: Tensor, factor: Tensor, dim: int) -> Tensor:
    """Shift each line of ``x (B, C, H, W)`` along ``dim`` (-1: rows move along W, -2:
    columns along H) by ``factor (B,)`` times its offset from the centre, band-limited
    (the Nyquist term of an even size dropped, as in :func:`fourier_shift`)."""
    n, other = x.shape[dim], x.shape[-1 if dim == -2 else -2]
    offset = torch.arange(other, device=x.device, dtype=torch.float32) - (other - 1) / 2
    shift = factor.to(x.device, torch.float32)[:, None] * offset  # (B, other)
    k = torch.fft.rfftfreq(n, device=x.device)
    keep = (k < 0.5).float()
    ramp = torch.polar(keep.expand(*shift.shape, -1), -2 * torch.pi * shift[..., None] * k)
    ramp = ramp[:, None] if dim == -1 else ramp[:, None].transpose(-1, -2)  # broadcast over C
    spec = torch.fft.rfft(x.float(), dim=dim) * ramp
    return torch.fft.irfft(spec, n=n, dim=dim).to(x.dtype)


def _inside(shift: Tensor, h: int, w: int) -> Tensor:
    """``(B, 1, H, W)`` mask of the pixels a circular move by ``shift (B, 2)`` did not wrap."""
    def axis(s: Tensor, n: int) -> Tensor:
        src = torch.arange(n, dtype=torch.float32, device=s.device) - s[:, None].float()  # source pixel
        return (src > -1e-6) & (src < n - 1 + 1e-6)

    return (axis(shift[:, 0], h)[:, :, None] & axis(shift[:, 1], w)[:, None, :])[:, None]


def fourier_rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate each image by its own angle without interpolation blur (band-limited, circular).

    ``x``: ``(B, C, N, N)``; ``angle``: ``(B,)`` radians, the sense of :func:`affine_sample`.
    Whole quarter turns are ``rot90`` (exact, and images turned by them alone are left at
    that); the rest, within ±45°, three Fourier shears (Unser et al. 1995), so noise keeps
    its spectrum (the Nyquist terms of even sizes dropped).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"fourier_rotate needs square images, got {tuple(x.shape[-2:])}")
    quarter = torch.round(angle / (math.pi / 2))
    rest = (angle - quarter * math.pi / 2).to(x.device)
    out = x.clone()
    for k in range(1, 4):
        pick = (quarter.long() % 4 == k).to(x.device)
        if pick.any():
            out[pick] = torch.rot90(x[pick], -k, (2, 3))
    turn = rest != 0
    if turn.any():
        a, b = -torch.tan(rest[turn] / 2), torch.sin(rest[turn])
        out[turn] = _shear(_shear(_shear(out[turn], a, -1), b, -2), a, -1)
    return out


@dataclass
class Augment:
    """Random translation, rotation and flips drawn per sample.

    Parameters
    ----------
    max_shift
        Largest translation in pixels along each axis (uniform in ``[-max_shift, max_shift]``).
    subpixel
        Draw real-valued shifts instead of integers.
    rotate
        Random in-plane rotation, uniform over 0–360°.
    flip
        Random left-right mirror (with ``rotate`` this covers all in-plane flips).
    fill
        What a shift brings in at the edges: ``zeros`` or ``circular`` (what left the
        other edge). Fourier rotations stay circular.
    interp
        ``bilinear`` (:func:`affine_sample`; blurs by up to half a pixel, noise included)
        or ``fourier`` (flip, then :func:`fourier_rotate` and :func:`fourier_shift`:
        band-limited, the images keep their noise spectrum; rotations wrap around, shifts
        follow ``fill``; square images).

    Call ``aug(x, generator)`` on a batch ``(B, C, H, W)``; parameters are drawn on the CPU
    from ``generator`` (reproducible on any device) and applied on ``x``'s device.
    """

    max_shift: float = 0.0
    subpixel: bool = True
    rotate: bool = False
    flip: bool = False
    fill: str = "zeros"
    interp: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interp not in INTERPOLATIONS:
            raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {self.interp!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")

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
        if self.interp == "bilinear":
            return affine_sample(x, angle, shift, flip, self.fill)
        if flip is not None:
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        if self.rotate:
            x = fourier_rotate(x, angle)
        if self.max_shift <= 0:
            return x
        shift = shift.to(x.device)
        x = fourier_shift(x, shift)
        return x * _inside(shift, *x.shape[-2:]).to(x.dtype) if self.fill == "zeros" else x
