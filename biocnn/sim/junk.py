"""Non-particle ("junk") images for good/bad curation: noise, ice, carbon edges, overlaps.

Each generator returns noise-free signals on a canvas twice the box, which then go through
the same CTF and noise model as the particles (cropped to the box after the CTF, so that
edges and fringes continue across the box border as in a micrograph): the junk class
differs in content, not in image statistics.
"""

from __future__ import annotations

import math

import torch

from biocnn.sim.imaging import shift_spectra
from biocnn.sim.project import images_to_spectra, spectra_to_images

__all__ = ["JUNK_KINDS", "junk_signals"]

JUNK_KINDS = ("noise", "ice", "carbon", "overlap")


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _coords(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(size, dtype=torch.float32) - size // 2
    return c[None, :], c[:, None]  # x (1, W), y (H, 1)


def _smooth_field(b: int, size: int, corr: float, g: torch.Generator) -> torch.Tensor:
    """``(b, size, size)`` Gaussian random field with correlation length ``corr`` px, unit std."""
    spec = images_to_spectra(torch.randn(b, size, size, generator=g))
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    field = spectra_to_images(spec * torch.exp(-2 * (math.pi * corr) ** 2 * (fx**2 + fy**2)), size)
    return field / field.flatten(1).std(dim=1).clamp_min(1e-12)[:, None, None]


def _ice(b: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Soft-edged discs of contamination, 2-6 per box, partly outside it."""
    x, y = _coords(2 * size)
    out = torch.zeros(b, 2 * size, 2 * size)
    for k in range(6):
        on = (torch.rand(b, generator=g) < (1.0 if k < 2 else 0.5)).float()
        cx, cy = _uniform((2, b), -0.6 * size, 0.6 * size, g)
        radius = _uniform((b,), 0.05 * size, 0.25 * size, g)
        amp = _uniform((b,), 0.5, 1.5, g) * on
        r = torch.sqrt((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2)
        out += amp[:, None, None] * torch.sigmoid((radius[:, None, None] - r) / 1.5)
    return out


def _carbon(b: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A straight carbon edge at a random angle and offset, with a textured carbon side."""
    x, y = _coords(2 * size)
    theta = _uniform((b,), 0.0, 2 * math.pi, g)[:, None, None]
    offset = _uniform((b,), -0.35 * size, 0.35 * size, g)[:, None, None]
    width = _uniform((b,), 0.5, 2.5, g)[:, None, None]
    side = torch.sigmoid((x * torch.cos(theta) + y * torch.sin(theta) - offset) / width)
    return side * (1.0 + 0.3 * _smooth_field(b, 2 * size, 0.05 * size, g))


def _overlap(b: int, size: int, particles: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """2-3 particles per image: one near the centre, the others 30-60 % of the box away."""
    spectra = torch.zeros(b, 2 * size, size + 1, dtype=torch.complex64)
    padded = torch.zeros(particles.shape[0], 2 * size, 2 * size)
    o = size - size // 2
    padded[:, o : o + size, o : o + size] = particles
    pool = images_to_spectra(padded)
    for k in range(3):
        pick = torch.randint(particles.shape[0], (b,), generator=g)
        dist = _uniform((b,), 0.0, 0.15 * size, g) if k == 0 else _uniform((b,), 0.3 * size,
                                                                          0.6 * size, g)
        angle = _uniform((b,), 0.0, 2 * math.pi, g)
        shift = torch.stack([dist * torch.cos(angle), dist * torch.sin(angle)], dim=1)
        on = 1.0 if k < 2 else (torch.rand(b, generator=g) < 0.5).float()[:, None, None]
        spectra += on * shift_spectra(pool[pick], shift)
    return spectra_to_images(spectra, 2 * size)


def junk_signals(
    n: int, size: int, particles: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """Noise-free junk images on a ``2 size`` canvas, the four kinds in equal shares.

    Parameters
    ----------
    n
        Number of images.
    size
        Box edge in pixels (the junk image is the central ``size`` crop of the canvas).
    particles
        ``(M, size, size)`` clean, centred particle projections to build overlaps from.
    generator
        CPU generator.

    Returns
    -------
    signals, kinds
        ``(n, 2 size, 2 size)`` float32 canvases centred on the box, and the kind of each
        image (one of :data:`JUNK_KINDS`).
    """
    kinds = [JUNK_KINDS[i % len(JUNK_KINDS)] for i in range(n)]
    out = torch.zeros(n, 2 * size, 2 * size)
    for kind in JUNK_KINDS:
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind], dtype=torch.long)
        if kind == "noise" or len(idx) == 0:
            continue
        if kind == "ice":
            out[idx] = _ice(len(idx), size, generator)
        elif kind == "carbon":
            out[idx] = _carbon(len(idx), size, generator)
        else:
            out[idx] = _overlap(len(idx), size, particles.float().cpu(), generator)
    return out, kinds
