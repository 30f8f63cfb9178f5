"""Class-average image formation: closed form vs brute force, SNR ~ K, mask, contrast, junk."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.sim.average import (
    AverageParams,
    average_transfer,
    class_average,
    ctf_moments,
    draw_average_params,
    explicit_phase_flip_average,
    finish_average,
    soft_mask,
)
from biocnn.sim.average_dataset import ModelSampler, render_good, render_junk
from biocnn.sim.average_junk import JUNK_SHARES, junk_kinds
from biocnn.sim.config import AverageSettings
from biocnn.sim.procedural import make_model, project_atoms
from biocnn.sim.project import euler_to_matrix, spectra_to_images


def _params(**kw: object) -> AverageParams:
    base = {"apix": 3.0, "apix_orig": 1.5, "box_orig": 64, "n_particles": 50, "snr": 0.05,
            "defocus_lo": 10000.0, "defocus_hi": 20000.0, "bfactor": 50.0, "voltage": 300.0,
            "cs": 2.7, "amplitude_contrast": 0.1, "correction": "phase_flip", "shift_error": 0.0,
            "mask_diameter": 28.0, "mask_edge": 2.0}
    return AverageParams(**{**base, **kw})


def _spectrum(n: int = 32, apix: float = 3.0) -> torch.Tensor:
    atoms = make_model("multidomain", 2e5, np.random.default_rng(0))
    rot = euler_to_matrix(torch.tensor([[30.0, 60.0, 10.0]]))
    return project_atoms(atoms, rot, apix, n)[0]


def _noise_var(spec: torch.Tensor, p: AverageParams, seed: int) -> float:
    """Variance of the noise part of a closed-form average (same defoci, signal removed)."""
    full = class_average(spec, p, 32, torch.Generator().manual_seed(seed),
                         np.random.default_rng(seed))
    clean = class_average(spec, dataclasses.replace(p, snr=1e12), 32,
                          torch.Generator().manual_seed(seed + 1), np.random.default_rng(seed))
    return float((full - clean).var())


def test_closed_form_phase_flip_average_matches_brute_force() -> None:
    spec, p = _spectrum(), _params(n_particles=200)
    sig_b, noise_b = explicit_phase_flip_average(spec, p, torch.Generator().manual_seed(0),
                                                 np.random.default_rng(3))
    clean = class_average(spec, dataclasses.replace(p, snr=1e12), 32,
                          torch.Generator().manual_seed(0), np.random.default_rng(3))
    corr = np.corrcoef(sig_b.numpy().ravel(), clean.numpy().ravel())[0, 1]
    assert corr > 0.995
    assert float(clean.std() / sig_b.std()) == pytest.approx(1.0, rel=0.05)
    assert _noise_var(spec, p, 3) == pytest.approx(float(noise_b.var()), rel=0.15)


def test_snr_of_phase_flipped_average_grows_like_k() -> None:
    spec = _spectrum()
    variances = []
    for k in (8, 64):  # brute force: K noisy, phase-flipped members averaged
        _, noise = explicit_phase_flip_average(spec, _params(n_particles=k),
                                               torch.Generator().manual_seed(k),
                                               np.random.default_rng(1))
        variances.append(float(noise.var()))
    assert variances[0] / variances[1] == pytest.approx(8.0, rel=0.2)
    closed = [_noise_var(spec, _params(n_particles=k), 5) for k in (20, 1000)]
    assert closed[0] / closed[1] == pytest.approx(50.0, rel=0.2)


def test_wiener_average_passes_less_than_all_signal_and_less_noise_with_k() -> None:
    spec = _spectrum()
    p = _params(correction="wiener")
    noise = [_noise_var(spec, dataclasses.replace(p, n_particles=k), 2) for k in (20, 1000)]
    assert noise[1] < noise[0] / 5
    t20, _ = average_transfer(spec, dataclasses.replace(p, n_particles=20), 32,
                              np.random.default_rng(0))
    t1000, _ = average_transfer(spec, dataclasses.replace(p, n_particles=1000), 32,
                                np.random.default_rng(0))
    assert bool(((t20 >= 0) & (t20 <= 1)).all()) and bool((t1000 >= t20 - 1e-6).all())
    assert float(t1000.mean()) > float(t20.mean())
    t_clean, _ = average_transfer(spec, dataclasses.replace(p, snr=1e12), 32,
                                  np.random.default_rng(0))
    assert float(t_clean.min()) > 0.99  # without noise the Wiener average restores S


def test_ctf_moments_of_many_defoci() -> None:
    k = torch.linspace(0.05, 0.3, 50)
    mabs, msq = ctf_moments(torch.linspace(5e3, 3e4, 4000), k, 300.0, 2.7, 0.1)
    # averaged over many defoci |sin| -> 2/pi and sin^2 -> 1/2 where the phase wraps fast
    assert float(mabs[-10:].mean()) == pytest.approx(2 / math.pi, abs=0.03)
    assert float(msq[-10:].mean()) == pytest.approx(0.5, abs=0.03)
    assert bool((mabs**2 <= msq + 1e-9).all())  # Jensen


@settings(max_examples=25, deadline=None)
@given(st.integers(16, 64), st.floats(4.0, 60.0), st.floats(0.5, 8.0))
def test_soft_mask_is_soft_and_monotone(size: int, diameter: float, edge: float) -> None:
    mask = soft_mask(size, diameter, edge)
    c = torch.arange(size, dtype=torch.float32) - size // 2
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2).flatten()
    m = mask.flatten()
    assert bool(((m >= 0) & (m <= 1)).all())
    assert bool((m[r <= diameter / 2] == 1).all()) and bool((m[r >= diameter / 2 + edge] == 0).all())
    order = torch.argsort(r)
    assert bool((m[order].diff() <= 1e-6).all())


def test_finished_average_is_masked_softly_and_protein_is_white() -> None:
    spec, p = _spectrum(), _params(n_particles=1000, snr=0.1)
    img = finish_average(class_average(spec, p, 32, torch.Generator().manual_seed(0),
                                       np.random.default_rng(0)), p)
    c = torch.arange(32, dtype=torch.float32) - 16
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    assert bool((img[r >= p.mask_diameter / 2 + p.mask_edge] == 0).all())
    edge = (r > p.mask_diameter / 2 + 0.3) & (r < p.mask_diameter / 2 + p.mask_edge - 0.3)
    inside = r <= p.mask_diameter / 2
    assert float(img[edge].abs().mean()) < float(img[inside].abs().mean())
    assert float(img[inside].std()) == pytest.approx(1.0, rel=1e-4)
    truth = spectra_to_images(spec, 32)
    particle = truth > 0.2 * truth.max()
    background = float(img[inside & ~particle].mean())  # includes the dark CTF halo
    assert float(img[particle].mean()) > max(0.5, background + 1.0)
    assert np.corrcoef(img.numpy().ravel(), truth.numpy().ravel())[0, 1] > 0.5


def test_drawn_parameters_respect_the_ranges() -> None:
    s, rng = AverageSettings(), np.random.default_rng(0)
    for diameter in (40.0, 150.0, 600.0):
        for _ in range(50):
            p, px = draw_average_params(rng, s, 128, diameter)
            assert s.apix_min - 1e-6 <= p.apix_orig <= s.apix_max + 1e-6 or diameter == 40.0
            assert p.apix_orig * p.box_orig == pytest.approx(p.apix * 128)
            assert s.particles_min <= p.n_particles <= s.particles_max
            assert s.mask_min * 128 <= p.mask_diameter <= s.mask_max * 128
            if diameter == 150.0:
                assert s.fill_min - 1e-6 <= px / p.mask_diameter <= s.fill_max + 1e-6
                assert s.box_min <= p.box_orig <= s.box_max


def test_junk_kinds_have_their_shares() -> None:
    assert sum(JUNK_SHARES.values()) == pytest.approx(1.0)
    kinds = junk_kinds(1000, np.random.default_rng(0))
    assert {k: kinds.count(k) for k in JUNK_SHARES} == {k: round(1000 * v)
                                                      for k, v in JUNK_SHARES.items()}
    small = junk_kinds(7, np.random.default_rng(0))
    assert len(small) == 7 and len(set(small)) == 7


@pytest.mark.parametrize("kind", list(JUNK_SHARES))
def test_every_junk_kind_renders(kind: str) -> None:
    rng, g = np.random.default_rng(1), torch.Generator().manual_seed(1)
    s = dataclasses.replace(AverageSettings(), mass_max=3e5)
    img, meta = render_junk(kind, ModelSampler([], s, rng), s, 48, rng, g)
    assert img.shape == (48, 48) and bool(torch.isfinite(img).all())
    assert meta["junk"] == kind and float(img.std()) > 0


def test_good_average_shows_its_particle() -> None:
    rng, g = np.random.default_rng(2), torch.Generator().manual_seed(2)
    s = dataclasses.replace(AverageSettings(), particle_snr_min=0.1, particles_min=900)
    atoms = make_model("globular", 5e5, rng)
    img, meta = render_good(atoms, s, 64, rng, g)
    p = meta["params"]
    assert p.n_particles >= 900 and img.shape == (64, 64)
    c = torch.arange(64, dtype=torch.float32) - 32
    r = torch.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    centre = r < 0.3 * meta["particle_px"]
    ring = (r > 0.6 * meta["particle_px"]) & (r < p.mask_diameter / 2)
    assert float(img[centre].mean()) > float(img[ring].mean()) + 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_junk_is_a_sharp_particle_with_a_smeared_partner(seed: int) -> None:
    """The class is aligned on one particle: it is the brightest spot, at the centre; the
    overlapping partners vary from member to member, so their mass sits off-centre, smeared."""
    from biocnn.sim.average_junk import junk_spectrum

    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    atoms = make_model("globular", 3e5, rng)
    m, apix = 128, 2.0
    d = atoms.diameter / apix  # particle diameter in pixels
    img = spectra_to_images(junk_spectrum("overlap", m, apix, d, 0.9 * m / 2, lambda: atoms,
                                          atoms, rng, g)[None], m)[0]
    c = torch.arange(m, dtype=torch.float32) - m // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    peak = int(img.argmax())
    assert math.hypot(float(y.flatten()[peak]), float(x.flatten()[peak])) < 0.15 * d
    w = img.clamp_min(0)
    offset = math.hypot(float((w * y).sum() / w.sum()), float((w * x).sum() / w.sum()))
    assert offset > 0.1 * d
