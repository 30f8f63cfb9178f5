"""Shared pytest fixtures. Append new fixtures; give shared ones clear, specific names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biocnn.io.mrc import write_mrc


def _blob(n: int, rng: np.random.Generator, sigma: float, noise: float = 0.3) -> np.ndarray:
    """``(n, n)`` Gaussian blob of width ``sigma`` px at the centre plus white noise."""
    c = np.arange(n) - n // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    return np.exp(-r2 / (2 * sigma**2)) + noise * rng.standard_normal((n, n))


@pytest.fixture
def cryo_class_folder(tmp_path: Path) -> Path:
    """A folder-per-class cryo-EM dataset (12 images, 2 classes, mixed sizes and pixel sizes).

    ``alpha/``: ``stack.mrcs`` (6 x 24 x 24 @ 1.5 Å, narrow blobs) and ``single.mrc``
    (24 x 24 @ 1.5 Å); ``beta/``: ``stack.mrcs`` (4 x 32 x 32 @ 1.0 Å, wide blobs) and
    ``volume.map`` (20^3 @ 1.8 Å, one image per volume with the default central slice).
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "maps"
    write_mrc(
        root / "alpha" / "stack.mrcs",
        np.stack([_blob(24, rng, 2.0) for _ in range(6)]),
        apix=1.5,
        is_stack=True,
    )
    write_mrc(root / "alpha" / "single.mrc", _blob(24, rng, 2.0), apix=1.5)
    write_mrc(
        root / "beta" / "stack.mrcs",
        np.stack([_blob(32, rng, 6.0) for _ in range(4)]),
        apix=1.0,
        is_stack=True,
    )
    c = np.arange(20) - 10
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    write_mrc(root / "beta" / "volume.map", np.exp(-r2 / 18.0), apix=1.8)
    return root
