"""CTF conventions, Thon rings of simulated images, shifts, noise and phase flipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biocnn.sim.ctf import ctf_2d, electron_wavelength
from biocnn.sim.imaging import add_noise, noise_sigma, phase_flip, shift_spectra
from biocnn.sim.project import (
    FourierProjector,
    euler_to_matrix,
    images_to_spectra,
    random_orientations,
    spectra_to_images,
)


def _ctf(size: int, apix: float, du: float, dv: float, angle: float = 0.0, **kw: float):
    one = torch.ones(1, dtype=torch.float64)
    return ctf_2d(size, apix, du * one, dv * one, angle * one, **kw)[0]


def test_electron_wavelength() -> None:
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=1e-5)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=1e-5)


def test_ctf_at_zero_frequency_is_amplitude_contrast_and_astigmatism_axes() -> None:
    ctf = _ctf(64, 2.0, 20000.0, 10000.0, amplitude_contrast=0.07)
    assert ctf[0, 0].item() == pytest.approx(0.07, abs=1e-6)
    # with DefocusAngle 0 the U defocus acts along x (row 0), V along y (column 0)
    along_u = _ctf(64, 2.0, 20000.0, 20000.0, amplitude_contrast=0.07)
    along_v = _ctf(64, 2.0, 10000.0, 10000.0, amplitude_contrast=0.07)
    assert torch.allclose(ctf[0, :], along_u[0, :], atol=1e-5)
    assert torch.allclose(ctf[:, 0], along_v[:, 0], atol=1e-5)
    rotated = _ctf(64, 2.0, 20000.0, 10000.0, angle=90.0, amplitude_contrast=0.07)
    assert torch.allclose(rotated[0, :], along_v[0, :], atol=1e-5)


def test_thon_ring_minima_of_a_simulated_image_sit_at_the_ctf_zeros() -> None:
    """Radial power spectrum of noise-free CTF-modulated projections: minima = CTF zeros."""
    n, apix, dz, volts, cs, q = 128, 2.0, 15000.0, 300.0, 2.7, 0.1
    g = torch.Generator().manual_seed(0)
    vol = torch.zeros(n, n, n)  # point atoms: a flat spectrum on average
    atoms = torch.randint(n // 2 - 20, n // 2 + 20, (400, 3), generator=g)
    vol.index_put_(tuple(atoms.T), torch.ones(400), accumulate=True)
    spectra = FourierProjector(vol).slices(euler_to_matrix(random_orientations(16, g)))
    ctf = _ctf(n, apix, dz, dz, voltage=volts, cs=cs, amplitude_contrast=q, bfactor=0.0)
    images = spectra_to_images(spectra * ctf, n)

    power = torch.fft.fftshift(torch.fft.fft2(images).abs() ** 2, dim=(-2, -1)).mean(0)
    yy, xx = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    ring = np.rint(np.hypot(yy, xx)).astype(int).ravel()
    radial = np.bincount(ring, power.numpy().ravel()) / np.bincount(ring)

    # gamma(k) = pi lam dz k^2 - pi/2 Cs lam^3 k^4 + asin(Q) = m pi  ->  k in pixels of the FFT
    lam, cs_a = electron_wavelength(volts), cs * 1e7
    a, b = 0.5 * math.pi * cs_a * lam**3, math.pi * lam * dz
    zeros = [math.sqrt((b - math.sqrt(b * b - 4 * a * (m * math.pi - math.asin(q)))) / (2 * a))
             * n * apix for m in range(1, 7)]
    lo, hi = int(0.7 * zeros[0]), int(zeros[-1]) + 2  # below lo: the object's own spectrum
    minima = [k for k in range(lo, hi) if radial[k] < radial[k - 1] and radial[k] < radial[k + 1]]
    assert len(minima) == len(zeros), (minima, zeros)
    for found, expected in zip(minima, zeros, strict=True):
        assert abs(found - expected) <= 1.0, (minima, zeros)
        assert radial[found] < 0.5 * radial[found - 2 : found + 3].max()  # a clear dip


def test_subpixel_shift_moves_the_centroid() -> None:
    n = 32
    c = torch.arange(n, dtype=torch.float32) - n // 2
    img = torch.exp(-(c[None, :] ** 2 + c[:, None] ** 2) / 8.0)[None]
    moved = spectra_to_images(shift_spectra(images_to_spectra(img), torch.tensor([[2.5, -1.25]])), n)
    w = moved[0] / moved[0].sum()
    assert (w.sum(0) * c).sum().item() == pytest.approx(2.5, abs=1e-3)
    assert (w.sum(1) * c).sum().item() == pytest.approx(-1.25, abs=1e-3)


def test_noise_is_added_at_the_target_snr_with_unit_variance() -> None:
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(4, 64, 64, generator=g) * torch.tensor([1.0, 3.0, 0.1, 0.0])[:, None, None]
    sigma = noise_sigma(signal, snr=0.25)
    noisy = add_noise(signal, sigma, g)
    clean = signal / sigma[:, None, None]
    assert torch.allclose(clean[:3].flatten(1).var(1), torch.full((3,), 0.25), rtol=1e-4)
    assert torch.allclose((noisy - clean).flatten(1).std(1), torch.ones(4), atol=0.05)
    assert sigma[3] == 1.0  # an empty image is pure unit noise


def test_phase_flip_makes_the_transfer_non_negative() -> None:
    n = 63  # odd: no Nyquist column, whose astigmatic CTF cannot be Hermitian
    images = torch.randn(2, n, n, generator=torch.Generator().manual_seed(0))
    ctf = torch.stack([_ctf(n, 2.0, 15000.0, 14000.0, 30.0), _ctf(n, 2.0, 25000.0, 25000.0)])
    modulated = spectra_to_images(images_to_spectra(images) * ctf, n)
    flipped = phase_flip(modulated, ctf)
    expected = spectra_to_images(images_to_spectra(images) * ctf.abs(), n)
    assert torch.allclose(flipped, expected, atol=1e-4)
