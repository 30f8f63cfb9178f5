"""Image formation after projection: sub-pixel shifts, CTF, noise at a target SNR, phase flips.

All spectra are in ``torch.fft.rfft2`` layout for images whose origin is the centre pixel
(see :func:`biocnn.sim.project.images_to_spectra`).
"""

from __future__ import annotations

import math

import torch

from biocnn.sim.project import images_to_spectra, spectra_to_images

__all__ = ["shift_spectra", "noise_sigma", "add_noise", "phase_flip"]


def shift_spectra(spectra: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate images by sub-pixel amounts via Fourier phase ramps (circular).

    Parameters
    ----------
    spectra
        ``(B, n, n // 2 + 1)`` complex.
    shifts
        ``(B, 2)`` translations ``(dx, dy)`` in pixels; content moves to ``+shift``.

    Returns
    -------
    torch.Tensor
        ``(B, n, n // 2 + 1)`` complex.
    """
    n = spectra.shape[-2]
    ky = torch.fft.fftfreq(n, device=spectra.device)[:, None]
    kx = torch.fft.rfftfreq(n, device=spectra.device)[None, :]
    s = shifts.to(spectra.device, torch.float32)
    phase = -2 * math.pi * (kx * s[:, 0, None, None] + ky * s[:, 1, None, None])
    return spectra * torch.polar(torch.ones_like(phase), phase)


def noise_sigma(signal: torch.Tensor, snr: float) -> torch.Tensor:
    """Noise standard deviation per image for ``SNR = var(signal) / var(noise)``.

    Parameters
    ----------
    signal
        ``(B, H, W)`` noise-free images.
    snr
        Target signal-to-noise ratio (> 0).

    Returns
    -------
    torch.Tensor
        ``(B,)``; images without any signal get ``1``.
    """
    var = signal.flatten(1).var(dim=1)
    sigma = torch.sqrt(var / snr)
    return torch.where(var > 0, sigma, torch.ones_like(sigma))


def add_noise(
    signal: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add white Gaussian noise of std ``sigma`` and rescale so the noise has unit variance.

    Parameters
    ----------
    signal
        ``(B, H, W)`` noise-free images.
    sigma
        ``(B,)`` noise standard deviations.
    generator
        CPU generator for the noise (drawn on the CPU, so results do not depend on device).

    Returns
    -------
    torch.Tensor
        ``(B, H, W)`` equal to ``signal / sigma + N(0, 1)``.
    """
    noise = torch.randn(signal.shape, generator=generator).to(signal.device)
    return signal / sigma[:, None, None] + noise


def phase_flip(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply image spectra by the sign of the CTF (phase flipping).

    Parameters
    ----------
    images
        ``(B, n, n)`` real.
    ctf
        ``(B, n, n // 2 + 1)`` CTF on the same grid.

    Returns
    -------
    torch.Tensor
        ``(B, n, n)`` real.
    """
    return spectra_to_images(images_to_spectra(images) * torch.sign(ctf), images.shape[-1])
