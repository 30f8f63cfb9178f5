"""Preprocessing: Fourier resampling, background normalisation, low-pass, config resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.data.preprocess import (
    PreprocessConfig,
    Standardize,
    circular_mask,
    crop_or_pad,
    fourier_resize,
    lowpass_filter,
    normalize_background,
    preprocess_images,
)
from biocnn.errors import BiocnnError


def band_limited(n: int, cutoff: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``(batch, n, n)`` real images with no frequency of ``cutoff`` cycles/box or more."""
    rng = np.random.default_rng(seed)
    spec = np.fft.fft2(rng.standard_normal((batch, n, n)))
    f = np.abs(np.fft.fftfreq(n) * n)
    keep = (f[:, None] < cutoff) & (f[None, :] < cutoff)
    return torch.from_numpy(np.fft.ifft2(spec * keep).real.astype(np.float32))


def bg_stats(x: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    outside = ~circular_mask(x.shape[-1], radius)
    bg = x[:, outside]
    return bg.mean(1), bg.std(1, correction=0)


# --- Fourier resampling -----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(12, 64), m=st.integers(12, 64), seed=st.integers(0, 100))
def test_fourier_resize_round_trips_band_limited_images(n: int, m: int, seed: int) -> None:
    x = band_limited(n, min(n, m) // 2 - 1, seed=seed)
    y = fourier_resize(x, (m, m))
    assert y.shape == (2, m, m)
    back = fourier_resize(y, (n, n))
    err = (back - x).abs().max() / x.abs().max()
    assert err < 1e-4
    torch.testing.assert_close(y.mean((1, 2)), x.mean((1, 2)), atol=1e-5, rtol=1e-4)


def test_fourier_resize_samples_the_continuous_band_limited_function() -> None:
    def f(n: int) -> torch.Tensor:  # cos(2 pi (3 u + 5 v)) + 0.5 sin(2 pi 2 v), u, v in [0, 1)
        u = torch.arange(n, dtype=torch.float64) / n
        ang = 2 * torch.pi * (3 * u[:, None] + 5 * u[None, :])
        return (torch.cos(ang) + 0.5 * torch.sin(2 * torch.pi * 2 * u[None, :])).float()[None]

    torch.testing.assert_close(fourier_resize(f(48), (20, 20)), f(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(fourier_resize(f(20), (33, 33)), f(33), atol=1e-5, rtol=0)


def test_crop_or_pad_keeps_the_centre_pixel() -> None:
    x = torch.zeros(1, 9, 9)
    x[0, 4, 4] = 1.0
    padded = crop_or_pad(x, (16, 16), fill=0.0)
    assert padded[0, 8, 8] == 1 and padded.sum() == 1
    cropped = crop_or_pad(padded, (7, 7))
    assert cropped[0, 3, 3] == 1 and cropped.sum() == 1
    assert crop_or_pad(x, (9, 9)) is x


# --- normalisation, inversion, low-pass -------------------------------------------------------


def test_background_is_mean0_std1_outside_the_mask() -> None:
    g = torch.Generator().manual_seed(0)
    x = 5.0 + 3.0 * torch.randn(4, 40, 40, generator=g)
    x[:, 12:28, 12:28] += 50.0  # a bright particle inside the mask must not count
    y = normalize_background(x, radius=16)
    mean, std = bg_stats(y, 16)
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(4), atol=1e-4, rtol=0)
    assert y[:, 20, 20].mean() > 10  # the particle is far above the background


def test_flat_background_falls_back_to_whole_image_std() -> None:
    x = torch.zeros(2, 32, 32)
    x[:, 12:20, 12:20] = 4.0  # a noiseless projection: background exactly 0
    y = normalize_background(x, radius=10)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.flatten(1).std(1, correction=0), torch.ones(2))
    assert (normalize_background(torch.full((1, 16, 16), 3.0), 5) == 0).all()


def test_pipeline_output_and_contrast_inversion() -> None:
    x = band_limited(50, 10, batch=3) * 7 + 2
    cfg = PreprocessConfig(box=40, apix=0.0, mask_radius=0.4)
    y = preprocess_images(x, cfg)
    assert y.shape == (3, 40, 40) and y.dtype == torch.float32
    mean, std = bg_stats(y, 16)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-4, rtol=0)
    inv = preprocess_images(x, PreprocessConfig(box=40, apix=0.0, invert=True))
    torch.testing.assert_close(inv, -y)


def test_lowpass_removes_high_and_keeps_low_frequencies() -> None:
    u = torch.arange(64, dtype=torch.float32) / 64
    low = torch.cos(2 * torch.pi * 4 * u)[None, :].expand(64, 64)  # 4/32 = 0.125 Nyquist
    high = torch.cos(2 * torch.pi * 24 * u)[:, None].expand(64, 64)  # 0.75 Nyquist
    out = lowpass_filter((low + high)[None], fraction=0.5, edge=0.1)[0]
    torch.testing.assert_close(out, low, atol=1e-4, rtol=0)


def test_lowpass_in_angstrom_matches_fraction_of_nyquist() -> None:
    x = band_limited(32, 16, batch=2)
    a = PreprocessConfig(box=32, apix=2.0, lowpass=8.0)  # 2 * 2 / 8 = 0.5 Nyquist
    b = PreprocessConfig(box=32, apix=2.0, lowpass=0.5)
    assert a.lowpass_fraction() == 0.5
    torch.testing.assert_close(preprocess_images(x, a, 2.0), preprocess_images(x, b, 2.0))


# --- resampling to a common pixel size and box ------------------------------------------------


def test_rescale_by_pixel_size_then_pad_to_box() -> None:
    x = band_limited(64, 12, batch=2)
    cfg = PreprocessConfig(box=40, apix=2.0)
    got = preprocess_images(x, cfg, apix=1.0)  # 64 px at 1 Å -> 32 px at 2 Å -> pad to 40
    expected = normalize_background(crop_or_pad(fourier_resize(x, (32, 32)), (40, 40)), 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_unknown_pixel_size_resizes_to_box_and_non_square_is_padded() -> None:
    x = band_limited(30, 8, batch=1)[:, :, :24]  # (1, 30, 24)
    cfg = PreprocessConfig(box=16, apix=1.5)
    assert preprocess_images(x, cfg, apix=0.0).shape == (1, 16, 16)
    expected = normalize_background(fourier_resize(crop_or_pad(x, (30, 30)), (16, 16)), 6.4)
    torch.testing.assert_close(preprocess_images(x, cfg), expected, atol=1e-5, rtol=1e-5)


def test_input_is_kept() -> None:
    x = (band_limited(32, 8, batch=2) * 5 + 3).numpy()
    before = x.copy()
    preprocess_images(x, PreprocessConfig(box=32, apix=0.0))
    np.testing.assert_array_equal(x, before)  # the caller's images are untouched


def _reference(x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Float64 background normalisation (the definition)."""
    x = x.astype(np.float64)
    bg = x[:, background]
    mean, std = bg.mean(1), bg.std(1)
    flat = ~(std > 1e-3 * x.reshape(len(x), -1).std(1))
    std = np.where(flat, x.reshape(len(x), -1).std(1), std)
    scale = np.where(std > 0, 1 / np.where(std > 0, std, 1), 0)
    return (x - mean[:, None, None]) * scale[:, None, None]


@settings(max_examples=60, deadline=None)
@given(size=st.integers(8, 40), offset=st.sampled_from([0.0, -3.0, 1e2, 1e4]),
       scale=st.sampled_from([1e-2, 1.0, 50.0]), invert=st.booleans(), seed=st.integers(0, 99))
def test_standardize_matches_float64_reference(size: int, offset: float, scale: float,
                                               invert: bool, seed: int) -> None:
    """The device module equals the float64 definition, also for raw counts far from 0."""
    rng = np.random.default_rng(seed)
    x = (offset + scale * rng.standard_normal((3, size, size))).astype(np.float32)
    x[1] = offset  # a constant image
    std = Standardize(size, 0.4 * size, invert=invert)
    got = std(torch.from_numpy(x)[:, None])[:, 0].numpy()
    expected = _reference(x, ~circular_mask(size, 0.4 * size).numpy()) * (-1 if invert else 1)
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)
    assert (got[1] == 0).all()


def test_standardize_is_a_buffered_module_on_any_device() -> None:
    std = PreprocessConfig(box=16, apix=1.0, mask_radius=5).standardizer()
    assert not list(std.parameters()) and "background" not in std.state_dict()
    assert std.background.shape == (16, 16) and int((~std.background).sum()) == int(
        circular_mask(16, 5).sum())
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    assert std(x).dtype == torch.float32 and std(x).shape == (2, 1, 16, 16)


def test_numpy_int_input_accepted() -> None:
    x = np.random.default_rng(0).integers(0, 100, (2, 16, 16)).astype(np.int16)
    y = preprocess_images(x, PreprocessConfig(box=16, apix=0.0))
    assert y.dtype == torch.float32 and y.shape == (2, 16, 16)


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "shapes", "apixes", "box", "apix"),
    [
        (PreprocessConfig(), [(64, 64)], [1.5], 64, 1.5),
        (PreprocessConfig(), [(64, 64), (128, 128)], [1.5, 1.0], 128, 1.0),
        (PreprocessConfig(), [(64, 64), (48, 40)], [0.0, 0.0], 64, 0.0),
        (PreprocessConfig(box=32), [(64, 64)], [1.5], 32, 3.0),
        (PreprocessConfig(apix=3.0), [(64, 64), (100, 100)], [1.5, 1.2], 40, 3.0),
        (PreprocessConfig(box=24, apix=2.0), [(64, 64)], [1.0], 24, 2.0),
        (PreprocessConfig(apix=100.0), [(16, 16)], [1.0], 8, 100.0),  # at least 8 px
    ],
)
def test_resolution_rules(
    cfg: PreprocessConfig, shapes: list, apixes: list, box: int, apix: float
) -> None:
    out = cfg.resolved(shapes, apixes)
    assert (out.box, out.apix) == (box, pytest.approx(apix))
    assert out.is_resolved and out.mask_radius == cfg.mask_radius


def test_config_round_trip_and_errors() -> None:
    cfg = PreprocessConfig(box=64, apix=1.2, mask_radius=20, invert=True, lowpass=6.0)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.mask_radius_px(64) == 20 and PreprocessConfig().mask_radius_px(50) == 20
    with pytest.raises(BiocnnError, match="unknown preprocessing option"):
        PreprocessConfig.from_dict({"boxsize": 3})
    for bad in ({"box": 4}, {"apix": -1.0}, {"mask_radius": 0}, {"lowpass": -2.0}):
        with pytest.raises(BiocnnError):
            PreprocessConfig(**bad)
    with pytest.raises(BiocnnError, match="lowpass 8.0 Å: needs known pixel sizes"):
        PreprocessConfig(lowpass=8.0).resolved([(32, 32)], [0.0])
    with pytest.raises(BiocnnError, match="mask_radius 40: leaves no background"):
        PreprocessConfig(mask_radius=40).resolved([(32, 32)], [1.0])
    with pytest.raises(ValueError, match="resolved"):
        preprocess_images(torch.zeros(1, 16, 16), PreprocessConfig(box=16))


def test_whole_image_standardisation_for_masked_class_averages() -> None:
    """A masked average's background is flat except for residues at the mask edge:
    background statistics would scale those up without bound; the image's do not."""
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 8:24] = torch.randn(2, 1, 16, 16)
    x[:, :, 0, :20] = 0.05  # residues of a soft mask edge outside the radius
    bg = PreprocessConfig(box=32, apix=0.0).standardizer()(x)
    whole = PreprocessConfig(box=32, apix=0.0, norm_region="image").standardizer()(x)
    assert bg.abs().max() > 50 and whole.abs().max() < 10
    torch.testing.assert_close(whole.mean((-2, -1)), torch.zeros(2, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.std((-2, -1), correction=0), torch.ones(2, 1), atol=1e-4, rtol=0)
    with pytest.raises(BiocnnError, match="norm_region 'x'"):
        PreprocessConfig(norm_region="x")
