"""Contrast transfer function of the electron microscope (RELION conventions).

``CTF(k) = sin(pi lambda dz k^2 - pi/2 Cs lambda^3 k^4 + asin(Q)) exp(-B k^2 / 4)``, the
sign RELION uses: positive at low frequency for underfocus, so CTF-modulated projections
keep positive (white) protein density, as in RELION-extracted particles. The
defocus along the frequency direction ``alpha`` is
``dz = (U + V)/2 + (U - V)/2 cos(2 (alpha - angle))`` (positive = underfocus, Å).
"""

from __future__ import annotations

import math

import torch

__all__ = ["electron_wavelength", "rfft_frequencies", "ctf_2d"]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def rfft_frequencies(
    size: int, apix: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (1/Å) of a ``torch.fft.rfft2`` grid.

    Returns
    -------
    tuple of torch.Tensor
        ``fy`` of shape ``(size, 1)`` and ``fx`` of shape ``(1, size // 2 + 1)``.
    """
    fy = torch.fft.fftfreq(size, d=apix, device=device)[:, None]
    fx = torch.fft.rfftfreq(size, d=apix, device=device)[None, :]
    return fy, fx


def ctf_2d(
    size: int,
    apix: float,
    defocus_u: torch.Tensor,
    defocus_v: torch.Tensor,
    defocus_angle: torch.Tensor,
    *,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    bfactor: float = 0.0,
) -> torch.Tensor:
    """Per-image CTF on an rfft2 grid.

    Parameters
    ----------
    size, apix
        Image edge (pixels) and pixel size (Å).
    defocus_u, defocus_v
        ``(B,)`` defocus in Å along the major/minor astigmatism axes (positive = underfocus).
    defocus_angle
        ``(B,)`` angle of the ``U`` axis from the x axis, degrees.
    voltage, cs, amplitude_contrast
        kV, mm, fraction ``Q`` in ``[0, 1)``.
    bfactor
        Envelope B-factor in Å^2 (``exp(-B k^2 / 4)``).

    Returns
    -------
    torch.Tensor
        ``(B, size, size // 2 + 1)`` float32.
    """
    fy, fx = rfft_frequencies(size, apix, device=defocus_u.device)
    k2 = fx**2 + fy**2  # (size, size // 2 + 1)
    alpha = torch.atan2(fy, fx)
    lam = electron_wavelength(voltage)
    u, v = defocus_u.float(), defocus_v.float()
    mean = ((u + v) / 2)[:, None, None]
    half = ((u - v) / 2)[:, None, None]
    angle = torch.deg2rad(defocus_angle.float())[:, None, None]
    dz = mean + half * torch.cos(2 * (alpha - angle))
    gamma = (
        math.pi * lam * dz * k2
        - 0.5 * math.pi * (cs * 1e7) * lam**3 * k2**2
        + math.asin(amplitude_contrast)
    )
    return torch.sin(gamma) * torch.exp(-bfactor * k2 / 4)
