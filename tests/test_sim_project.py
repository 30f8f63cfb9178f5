"""Orientation conventions, uniform SO(3) sampling and Fourier-slice projection accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, stats

from biocnn.sim.project import (
    FourierProjector,
    euler_to_matrix,
    images_to_spectra,
    random_orientations,
    spectra_to_images,
)


def _blob_volume(n: int, seed: int = 0, blobs: int = 12) -> torch.Tensor:
    """``(n, n, n)`` sum of Gaussian blobs inside the central sphere (an asymmetric object)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n)
    for _ in range(blobs):
        p = (torch.rand(3, generator=g) - 0.5) * n * 0.5
        s = 1.5 + 2 * torch.rand(1, generator=g)
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s**2))
    return vol


def _real_space_projection(vol: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Reference: rotate by sampling ``V(A^T r)`` with cubic splines, then sum along z."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float64)
    src = r @ a  # rows of (A^T r)^T
    coords = np.stack([src[:, 2], src[:, 1], src[:, 0]]) + n // 2
    return ndimage.map_coordinates(vol, coords, order=3).reshape(n, n, n).sum(0)


def test_fourier_projection_matches_real_space_rotate_and_sum() -> None:
    n = 32
    vol = _blob_volume(n)
    angles = random_orientations(5, torch.Generator().manual_seed(1))
    rot = euler_to_matrix(angles)
    fourier = FourierProjector(vol).project(rot).numpy()
    assert fourier.shape == (5, n, n)
    for i in range(5):
        ref = _real_space_projection(vol.numpy(), rot[i].double().numpy())
        corr = np.corrcoef(ref.ravel(), fourier[i].ravel())[0, 1]
        assert corr >= 0.99, (i, corr)


def test_projection_places_atoms_by_the_relion_convention() -> None:
    """A blob at volume x=+6 lands at image (x, y) = A (6, 0, 0) from the centre."""
    n = 32
    c = torch.arange(n, dtype=torch.float32) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.exp(-((x - 6) ** 2 + y**2 + z**2) / 2.0)
    angles = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 90.0, 0.0], [30.0, 40.0, 50.0]])
    rot = euler_to_matrix(angles)
    images = FourierProjector(vol).project(rot)
    for img, a in zip(images, rot, strict=True):
        expected = a @ torch.tensor([6.0, 0.0, 0.0])
        iy, ix = np.unravel_index(int(img.argmax()), img.shape)
        assert abs(ix - n // 2 - expected[0]) <= 1 and abs(iy - n // 2 - expected[1]) <= 1


@settings(max_examples=30, deadline=None)
@given(st.floats(-180, 180), st.floats(0, 180), st.floats(-180, 180))
def test_euler_matrices_are_rotations_with_relion_view_direction(
    rot: float, tilt: float, psi: float
) -> None:
    a = euler_to_matrix(torch.tensor([[rot, tilt, psi]], dtype=torch.float64))[0]
    assert torch.allclose(a @ a.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.linalg.det(a).item() == pytest.approx(1.0)
    r, t = np.radians(rot), np.radians(tilt)
    view = torch.tensor([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)])
    assert torch.allclose(a[2], view.double(), atol=1e-12)


def test_orientation_sampling_is_uniform_on_so3() -> None:
    angles = random_orientations(4000, torch.Generator().manual_seed(0)).double()
    a = euler_to_matrix(angles)
    uniform = stats.uniform(loc=-1, scale=2).cdf
    assert stats.kstest(a[:, 2, 2].numpy(), uniform).pvalue > 0.01  # view direction z
    assert stats.kstest(a[:, 0, 2].numpy(), uniform).pvalue > 0.01  # A^T e_x, z-component
    psi_cdf = stats.uniform(loc=-180, scale=360).cdf
    assert stats.kstest(angles[:, 2].numpy(), psi_cdf).pvalue > 0.01
    assert stats.kstest(angles[:, 0].numpy(), psi_cdf).pvalue > 0.01


def test_tilt_max_restricts_views() -> None:
    angles = random_orientations(500, torch.Generator().manual_seed(0), tilt_max=30.0)
    assert angles[:, 1].max() <= 30.0 + 1e-4
    assert angles[:, 1].min() >= 0.0


def test_spectra_round_trip_and_crop() -> None:
    images = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    back = spectra_to_images(images_to_spectra(images), 16)
    assert torch.allclose(back, images, atol=1e-5)
    crop = spectra_to_images(images_to_spectra(images), 16, 8)
    assert torch.allclose(crop, images[:, 4:12, 4:12], atol=1e-5)
