"""Image preprocessing shared by training and prediction, serialisable into checkpoints.

For a batch ``(B, H, W)`` of images with pixel size ``a`` Å, :func:`preprocess_images`:

1. pads a non-square image to square (fill: mean of its edge pixels);
2. resamples by Fourier cropping/padding: to ``round(n * a / cfg.apix)`` px when both
   pixel sizes are known, else straight to ``cfg.box`` px;
3. crops/pads to ``cfg.box`` in real space (centre ``n // 2``; fill: edge mean);
4. low-pass filters (optional, raised-cosine edge);
5. normalises to mean 0 / std 1 **outside** a circular mask (RELION convention: the
   background is outside the circle). If the background is flat (std below 1e-3 of the
   whole image's, e.g. a noiseless projection) the whole image's std is used instead;
6. inverts the contrast (optional).

Steps 1-4 (geometry, :func:`resample_images`) run where the pixels are read, in the
dataset; steps 5-6 (:class:`Standardize`) run as batched torch ops on the training or
prediction device. Training and prediction build the same :class:`Standardize` from the
checkpoint's config (:meth:`PreprocessConfig.standardizer`), so they cannot disagree.

:meth:`PreprocessConfig.resolved` fills in ``box``/``apix`` left as None from the data; a
checkpoint stores the resolved config so prediction repeats training exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from biocnn.config import DictConfig
from biocnn.errors import BiocnnError, OptionError

__all__ = [
    "PreprocessConfig",
    "Standardize",
    "standardize_images",
    "resample_images",
    "preprocess_images",
    "fourier_resize",
    "crop_or_pad",
    "lowpass_filter",
    "circular_mask",
    "normalize_background",
    "MIN_BOX",
]

#: Smallest output box (the CNN core needs H, W >= 8).
MIN_BOX = 8


@dataclass(frozen=True)
class PreprocessConfig(DictConfig):
    """Preprocessing parameters.

    Attributes
    ----------
    box
        Output size in pixels (square); None = resolve from the data.
    apix
        Output pixel size in Å; 0 = unknown (images are resized to ``box``);
        None = resolve from the data.
    mask_radius
        Radius of the circle whose outside is the background for normalisation:
        ``< 1`` is a fraction of the box (0.5 touches the edges), ``>= 1`` is pixels.
    invert
        Multiply by -1 at the end (e.g. to make protein white).
    lowpass
        0 = off; ``<= 1`` is a fraction of Nyquist; ``> 1`` is a resolution in Å (needs
        a known ``apix``).
    lowpass_edge
        Width of the raised-cosine edge as a fraction of Nyquist.
    normalize
        Apply the background normalisation (step 5).
    norm_region
        Pixels whose mean and std standardise an image: ``"background"`` (outside the mask:
        particles, whose background is noise) or ``"image"`` (all of them: class averages,
        masked to an exactly flat background whose std would blow small residues up).
    """

    _what = "preprocessing"  # the name its unknown saved keys are reported under

    box: int | None = None
    apix: float | None = None
    mask_radius: float = 0.4
    invert: bool = False
    lowpass: float = 0.0
    lowpass_edge: float = 0.05
    normalize: bool = True
    norm_region: str = "background"

    def __post_init__(self) -> None:
        if self.norm_region not in ("background", "image"):
            raise OptionError("norm_region", repr(self.norm_region), "use background or image")
        if self.box is not None and (isinstance(self.box, bool) or int(self.box) < MIN_BOX):
            raise OptionError("box", self.box, f"must be an integer >= {MIN_BOX}")
        if self.apix is not None and not (math.isfinite(self.apix) and self.apix >= 0):
            raise OptionError("apix", self.apix, "must be >= 0 (0 = unknown)")
        if not (math.isfinite(self.mask_radius) and self.mask_radius > 0):
            raise OptionError("mask_radius", self.mask_radius, "must be > 0")
        if not (math.isfinite(self.lowpass) and self.lowpass >= 0):
            raise OptionError("lowpass", self.lowpass, "must be >= 0 (0 = off)")
        if not (math.isfinite(self.lowpass_edge) and self.lowpass_edge >= 0):
            raise OptionError("lowpass_edge", self.lowpass_edge, "must be >= 0")

    @property
    def is_resolved(self) -> bool:
        """True when ``box`` and ``apix`` are both set."""
        return self.box is not None and self.apix is not None

    def mask_radius_px(self, box: int) -> float:
        """The mask radius in pixels for a ``box``-pixel image."""
        return self.mask_radius * box if self.mask_radius < 1 else self.mask_radius

    def lowpass_fraction(self) -> float:
        """Low-pass cutoff as a fraction of the output Nyquist (0 = off); needs resolved apix."""
        if self.lowpass <= 1:
            return self.lowpass
        return 2.0 * float(self.apix or 0.0) / self.lowpass

    def resolved(
        self, shapes: Iterable[tuple[int, int]], apixes: Iterable[float]
    ) -> PreprocessConfig:
        """Fill in ``box`` and ``apix`` from the images' ``(H, W)`` shapes and pixel sizes.

        ``box`` defaults to the largest ``max(H, W)``. ``apix`` defaults to the coarsest
        sampling that fits the largest field of view into the box,
        ``max(max(H, W) * a) / box`` over images with a known ``a``, or 0 when no pixel
        size is known. When ``apix`` is given but ``box`` is not, the box is the largest
        rescaled size ``round(max(H, W) * a / apix)``. Checks that the low-pass and the
        mask make sense for the result.
        """
        pairs = [(max(int(h), int(w)), float(a)) for (h, w), a in zip(shapes, apixes, strict=True)]
        if not pairs:
            raise BiocnnError("no images to derive the preprocessing box from")
        known = [(n, a) for n, a in pairs if a > 0]
        box, apix = self.box, self.apix
        if box is None:
            if apix:
                box = max(round(n * a / apix) if a > 0 else n for n, a in pairs)
            else:
                box = max(n for n, _ in pairs)
            box = max(box, MIN_BOX)
        if apix is None:
            apix = max(n * a for n, a in known) / box if known else 0.0
        out = replace(self, box=int(box), apix=float(apix))
        if self.lowpass > 1 and not apix:
            raise OptionError("lowpass", f"{self.lowpass} Å", "needs known pixel sizes")
        if self.norm_region == "background" and circular_mask(
                out.box, out.mask_radius_px(out.box)).all():
            raise OptionError("mask_radius", self.mask_radius,
                              f"leaves no background in a {out.box}-px box")
        return out

    def is_passthrough(self, shape: tuple[int, int], apix: float) -> bool:
        """True when ``(H, W)`` images of pixel size ``apix`` need no padding, resampling
        or filtering (steps 1-4); needs a resolved config."""
        h, w = int(shape[0]), int(shape[1])
        if h != w or h != self.box or self.lowpass > 0:
            return False
        return not (apix > 0 and self.apix) or round(h * apix / self.apix) == h

    def standardizer(self) -> Standardize:
        """Steps 5-6 as a module for the device (needs a resolved config)."""
        box = int(self.box)  # type: ignore[arg-type]
        radius = self.mask_radius_px(box) if self.norm_region == "background" else -1.0
        return Standardize(box, radius, normalize=self.normalize, invert=self.invert)


def _edge_mean(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 1)`` mean of the outermost pixels of ``x`` ``(B, H, W)``."""
    edge = torch.cat([x[:, 0, :], x[:, -1, :], x[:, 1:-1, 0], x[:, 1:-1, -1]], dim=1)
    return edge.mean(dim=1).view(-1, 1, 1)


def _centre_window(n: int, m: int) -> tuple[slice, slice]:
    """Slices ``(src, dst)`` that copy the centred overlap of length ``min(n, m)``
    from an axis of length ``n`` to one of length ``m``; centres are ``n // 2``, ``m // 2``."""
    k = min(n, m)
    s, d = n // 2 - k // 2, m // 2 - k // 2
    return slice(s, s + k), slice(d, d + k)


def _centre_copy(
    x: torch.Tensor, size: tuple[int, int], fill: torch.Tensor | float
) -> torch.Tensor:
    (sy, dy), (sx, dx) = _centre_window(x.shape[-2], size[0]), _centre_window(x.shape[-1], size[1])
    out = torch.empty((*x.shape[:-2], *size), dtype=x.dtype, device=x.device)
    out[...] = fill
    out[..., dy, dx] = x[..., sy, sx]
    return out


def crop_or_pad(
    x: torch.Tensor, size: tuple[int, int], fill: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Centre-crop and/or pad ``x`` ``(B, H, W)`` to ``(B, *size)`` in real space.

    Pixel ``(H // 2, W // 2)`` moves to ``(size[0] // 2, size[1] // 2)``. Padding uses
    ``fill`` (scalar or ``(B, 1, 1)``), by default the mean of each image's edge pixels.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return _centre_copy(x, size, _edge_mean(x) if fill is None else fill)


def fourier_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample ``x`` ``(B, H, W)`` to ``(B, *size)`` by cropping/zero-padding its spectrum.

    The pixel values' scale (and the image mean) is preserved. An image band-limited below
    the smaller of the two Nyquist frequencies is reproduced exactly (up to float error),
    so down- then up-sampling it round-trips. Content exactly at an even size's Nyquist
    frequency is not split or folded (it is a single row/column of the spectrum).
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    spec = torch.fft.rfft2(x.to(torch.float32))  # (B, H, W // 2 + 1); rfft is much faster
    spec = torch.fft.fftshift(spec, dim=-2)
    spec = _centre_copy(spec, (size[0], w // 2 + 1), 0.0)
    spec = torch.fft.ifftshift(spec, dim=-2)
    half = size[1] // 2 + 1
    if half <= spec.shape[-1]:
        spec = spec[..., :half]
    else:
        spec = torch.nn.functional.pad(spec, (0, half - spec.shape[-1]))
    out = torch.fft.irfft2(spec, s=size)
    return out * (size[0] * size[1] / (h * w))


def _radial_frequency(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(H, W)`` spatial frequency in units of Nyquist (1 = Nyquist along an axis), FFT order.

    The first ``W // 2 + 1`` columns are the non-negative ``rfft`` frequencies."""
    fy = torch.fft.fftfreq(h, device=device).view(-1, 1) * 2
    fx = torch.fft.fftfreq(w, device=device).view(1, -1) * 2
    return torch.sqrt(fy**2 + fx**2)


def lowpass_filter(x: torch.Tensor, fraction: float, edge: float = 0.05) -> torch.Tensor:
    """Low-pass ``x`` ``(B, H, W)`` at ``fraction`` of Nyquist with a raised-cosine edge.

    The filter is 1 below ``fraction - edge / 2``, 0 above ``fraction + edge / 2``.
    """
    r = _radial_frequency(x.shape[-2], x.shape[-1], x.device)
    if edge > 0:
        t = ((r - (fraction - edge / 2)) / edge).clamp(0, 1)
        filt = 0.5 * (1 + torch.cos(math.pi * t))
    else:
        filt = (r <= fraction).to(x.dtype)
    h, w = x.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(x) * filt[:, : w // 2 + 1], s=(h, w))


def circular_mask(box: int, radius: float, device: torch.device | None = None) -> torch.Tensor:
    """``(box, box)`` bool mask, True inside the circle of ``radius`` px around ``box // 2``."""
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    return c.view(-1, 1) ** 2 + c.view(1, -1) ** 2 <= radius**2


#: A background std below this fraction of the whole image's counts as flat.
_FLAT_BACKGROUND = 1e-3


def standardize_images(
    x: Tensor, background: Tensor, normalize: bool = True, invert: bool = False
) -> Tensor:
    """Mean 0 / std 1 over the ``background`` pixels of each image, then optional inversion.

    Parameters
    ----------
    x
        ``(..., H, W)`` float images on any device.
    background
        ``(H, W)`` bool or 0/1 float, True on the background pixels.
    normalize
        False: only invert (if asked).
    invert
        Multiply the result by -1.

    Returns
    -------
    Tensor
        ``(..., H, W)`` float32. A flat background (std below 1e-3 of the whole image's, e.g.
        a noiseless projection) is scaled by the whole image's std; a constant image becomes 0.
    """
    x = x.float()
    if normalize:
        # a per-image offset taken from the first row first: float32 sums of raw counts
        # around 1e4 would otherwise cancel the background std of a clean image
        x = x - x[..., :1, :].mean(-1, keepdim=True)
        w = background.to(x.device, torch.float32)
        n_bg = w.sum()
        mean = (x * w).sum((-2, -1), keepdim=True) / n_bg
        x = x - mean
        var_bg = (x.square() * w).sum((-2, -1), keepdim=True) / n_bg
        var_all = x.var((-2, -1), unbiased=False, keepdim=True)
        var = torch.where(var_bg > _FLAT_BACKGROUND**2 * var_all, var_bg, var_all)
        x = x * torch.where(var > 0, var.rsqrt(), torch.zeros_like(var))
    return -x if invert else x


class Standardize(nn.Module):
    """Steps 5-6 of the pipeline as a non-trainable module: ``(B, C, box, box)`` -> same.

    Parameters
    ----------
    box
        Image size in pixels.
    mask_radius
        Radius in px of the circle around ``box // 2`` whose outside is the background;
        negative: every pixel is (whole-image standardisation).
    normalize, invert
        As in :func:`standardize_images`.
    """

    def __init__(self, box: int, mask_radius: float, normalize: bool = True,
                 invert: bool = False) -> None:
        super().__init__()
        self.box, self.mask_radius = int(box), float(mask_radius)
        self.normalize, self.invert = bool(normalize), bool(invert)
        background = (~circular_mask(self.box, self.mask_radius) if self.mask_radius >= 0
                      else torch.ones(self.box, self.box, dtype=torch.bool))
        self.register_buffer("background", background, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return standardize_images(x, self.background, self.normalize, self.invert)

    def extra_repr(self) -> str:
        return (f"box={self.box}, mask_radius={self.mask_radius:g}, normalize={self.normalize}, "
                f"invert={self.invert}")


def normalize_background(x: Tensor, radius: float) -> Tensor:
    """Shift/scale ``x`` ``(B, H, H)`` to mean 0 / std 1 outside the circle of ``radius`` px
    (see :func:`standardize_images`); float32 on ``x``'s device."""
    return standardize_images(x, ~circular_mask(x.shape[-1], radius, x.device))


def resample_images(
    images: Tensor | np.ndarray, cfg: PreprocessConfig, apix: float = 0.0
) -> Tensor:
    """Steps 1-4 of the pipeline (module docstring): pad to square, resample, crop/pad to
    the box, low-pass.

    Parameters
    ----------
    images
        ``(B, H, W)`` images (any real dtype) sharing one pixel size.
    cfg
        A resolved config (:meth:`PreprocessConfig.resolved`).
    apix
        Pixel size of ``images`` in Å; 0 = unknown.

    Returns
    -------
    Tensor
        ``(B, box, box)`` float32 on the input's device (``images`` itself when it is float32
        and needs nothing).
    """
    if not cfg.is_resolved:
        raise ValueError("resample_images needs a resolved PreprocessConfig (box and apix set)")
    box = int(cfg.box)  # type: ignore[arg-type]
    x = torch.as_tensor(images).to(torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (B, H, W) images, got shape {tuple(x.shape)}")
    if cfg.is_passthrough(tuple(x.shape[-2:]), apix):
        return x
    n = max(x.shape[-2:])
    x = crop_or_pad(x, (n, n))
    m = max(1, round(n * apix / cfg.apix)) if (apix > 0 and cfg.apix) else box
    x = fourier_resize(x, (m, m))
    x = crop_or_pad(x, (box, box))
    if cfg.lowpass > 0:
        x = lowpass_filter(x, cfg.lowpass_fraction(), cfg.lowpass_edge)
    return x


def preprocess_images(
    images: Tensor | np.ndarray, cfg: PreprocessConfig, apix: float = 0.0
) -> Tensor:
    """The whole pipeline (steps 1-6) on a batch ``(B, H, W)`` -> ``(B, box, box)`` float32:
    :func:`resample_images` then the config's :class:`Standardize`."""
    x = resample_images(images, cfg, apix)
    return cfg.standardizer().to(x.device)(x)
