"""Junk class averages as 2D classification produces them (noise-free signals).

Each generator returns the clean spectrum of one junk class on a canvas twice the box
(so that edges, neighbours and rings continue past the mask as in the micrograph); it
then goes through the same averaging, CTF correction, noise and masking as the good
classes (:func:`biocnn.sim.average.class_average`), so junk differs in content only.

======================  =====  =============================================================
kind                    share  what it shows
======================  =====  =============================================================
``noise``               0.08   nothing: a class of noise (false picks, empty ice)
``blob``                0.08   1-3 featureless smooth blobs
``misaligned``          0.12   a real particle averaged over random views and shifts (blur)
``ice``                 0.08   1-3 sharp-edged dense ice discs, partly in the mask
``crystalline_ice``     0.06   lattice fringes (1-3 plane waves) over an ice patch
``carbon``              0.10   a straight or hole-arc carbon edge with textured carbon
``aggregate``           0.10   4-15 particles clumped and blurred
``mask_cut``            0.08   a particle 1.25-1.8x the mask, or centred on the mask edge
``neighbour``           0.08   a weak centre with a sharp neighbour dominating the mask
``overlap``             0.08   a particle overlapped by partners at varying places (smeared)
``streak``              0.06   1-4 straight streaks (filaments, drift, edges of grid bars)
``contamination_ring``  0.08   a thin dense ring, sometimes filled (ethane/ice contamination)
======================  =====  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from biocnn.sim.average import small_rotations
from biocnn.sim.procedural import PseudoAtoms, project_atoms
from biocnn.sim.project import euler_to_matrix, images_to_spectra, random_orientations

__all__ = ["JUNK_SHARES", "junk_kinds", "junk_spectrum"]

#: Share of each junk kind among the junk class averages (sums to 1).
JUNK_SHARES: dict[str, float] = {
    "noise": 0.08, "blob": 0.08, "misaligned": 0.12, "ice": 0.08, "crystalline_ice": 0.06,
    "carbon": 0.10, "aggregate": 0.10, "mask_cut": 0.08, "neighbour": 0.08, "overlap": 0.08,
    "streak": 0.06, "contamination_ring": 0.08,
}


def junk_kinds(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` kinds in the shares of :data:`JUNK_SHARES` (largest remainder), shuffled."""
    names = list(JUNK_SHARES)
    exact = np.array([JUNK_SHARES[k] for k in names]) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    kinds = [k for k, c in zip(names, counts, strict=True) for _ in range(c)]
    return [kinds[i] for i in rng.permutation(n)]


def _grid(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(m, dtype=torch.float32) - m // 2
    return c[None, :], c[:, None]


def _rotations(n: int, g: torch.Generator) -> torch.Tensor:
    return euler_to_matrix(random_orientations(n, g))


def _polar(r: float, rng: np.random.Generator) -> torch.Tensor:
    a = rng.uniform(0, 2 * math.pi)
    return torch.tensor([r * math.cos(a), r * math.sin(a)])


def _smooth_field(m: int, corr: float, g: torch.Generator) -> torch.Tensor:
    """``(m, m)`` Gaussian random field, correlation length ``corr`` px, unit std."""
    spec = images_to_spectra(torch.randn(1, m, m, generator=g))[0]
    fy = torch.fft.fftfreq(m)[:, None]
    fx = torch.fft.rfftfreq(m)[None, :]
    f = torch.fft.irfft2(spec * torch.exp(-2 * (math.pi * corr) ** 2 * (fx**2 + fy**2)), s=(m, m))
    return f / f.std().clamp_min(1e-12)


def junk_spectrum(
    kind: str,
    m: int,
    apix: float,
    particle_px: float,
    mask_radius: float,
    sample: Callable[[], PseudoAtoms],
    atoms: PseudoAtoms,
    rng: np.random.Generator,
    g: torch.Generator,
) -> torch.Tensor:
    """Clean spectrum of one junk class average of ``kind``.

    Parameters
    ----------
    kind
        A key of :data:`JUNK_SHARES`.
    m
        Canvas edge (px), twice the output box.
    apix
        Output pixel size (Å).
    particle_px, mask_radius
        Diameter of ``atoms`` and radius of the mask, in output pixels.
    sample
        Draws another particle model (neighbours, aggregates).
    atoms
        The class's particle model.
    rng, g
        Parameter and torch generators.

    Returns
    -------
    torch.Tensor
        ``(m, m // 2 + 1)`` complex64, origin at the centre pixel.
    """
    x, y = _grid(m)
    R, d = mask_radius, particle_px

    def proj(a: PseudoAtoms, n: int, shifts: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
        return project_atoms(a, _rotations(n, g), apix, m, shifts, extra_sigma=blur * apix)

    def image(img: torch.Tensor) -> torch.Tensor:
        return images_to_spectra(img[None])[0]

    if kind == "noise":
        return torch.zeros(m, m // 2 + 1, dtype=torch.complex64)
    if kind == "blob":
        out = torch.zeros(m, m)
        for _ in range(int(rng.integers(1, 4))):
            c = _polar(rng.uniform(0, 0.3 * R), rng)
            sx, sy = rng.uniform(0.08, 0.3, 2) * 2 * R
            th = rng.uniform(0, math.pi)
            u = (x - c[0]) * math.cos(th) + (y - c[1]) * math.sin(th)
            v = -(x - c[0]) * math.sin(th) + (y - c[1]) * math.cos(th)
            out += rng.uniform(0.5, 1.5) * torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        return image(out)
    if kind == "misaligned":
        n = 12
        shifts = torch.from_numpy(rng.normal(0, rng.uniform(0.05, 0.2) * d, (n, 2))).float()
        return proj(atoms, n, shifts, blur=rng.uniform(0.03, 0.12) * d).mean(0)
    if kind == "ice":
        out = torch.zeros(m, m)
        for _ in range(int(rng.integers(1, 4))):
            c = _polar(rng.uniform(0, 1.2 * R), rng)
            radius = rng.uniform(0.2, 1.0) * R
            r = torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2)
            out += rng.uniform(2, 6) * torch.sigmoid((radius - r) / rng.uniform(0.5, 2.0))
        return image(out)
    if kind == "crystalline_ice":
        c = _polar(rng.uniform(0, 0.8 * R), rng)
        r = torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2)
        patch = torch.sigmoid((rng.uniform(0.6, 2.0) * R - r) / 2.0)
        period = rng.uniform(2.5, 8.0)
        th0 = rng.uniform(0, math.pi)
        waves = torch.zeros(m, m)
        for j in range(int(rng.integers(1, 4))):  # hexagonal ice: directions 60 deg apart
            th = th0 + j * math.pi / 3
            waves += torch.cos(2 * math.pi * (x * math.cos(th) + y * math.sin(th)) / period
                               + rng.uniform(0, 2 * math.pi))
        return image(patch * (rng.uniform(1, 3) + rng.uniform(0.5, 2) * waves))
    if kind == "carbon":
        th = rng.uniform(0, 2 * math.pi)
        u = x * math.cos(th) + y * math.sin(th)
        if rng.random() < 0.5:  # straight edge
            dist = u - rng.uniform(-0.6, 0.6) * R
        else:  # the rim of a hole: a circle of radius 1.5-5 R centred outside the box
            rad = rng.uniform(1.5, 5.0) * R
            off = rad + rng.uniform(-0.6, 0.6) * R
            v = -x * math.sin(th) + y * math.cos(th)
            dist = rad - torch.sqrt((u + off) ** 2 + v**2)
        side = torch.sigmoid(dist / rng.uniform(0.5, 2.5))
        texture = 1.0 + rng.uniform(0.1, 0.4) * _smooth_field(m, rng.uniform(1.0, 4.0), g)
        return image(rng.uniform(2, 5) * side * texture)
    if kind == "aggregate":
        n = int(rng.integers(4, 16))
        spread = rng.uniform(0.2, 0.5) * R
        shifts = torch.from_numpy(rng.normal(0, spread, (n, 2))).float()
        return proj(atoms, n, shifts, blur=rng.uniform(1.0, 3.0)).sum(0)
    if kind == "mask_cut":
        if rng.random() < 0.5:  # off-centre: the mask edge crosses the particle
            shift = _polar(R + rng.uniform(-0.35, 0.15) * d, rng)[None]
            return proj(atoms, 1, shift)[0]
        big = rng.uniform(1.25, 1.8) * 2 * R / d  # clearly larger than the mask (good <= 0.9)
        scaled = PseudoAtoms(atoms.xyz * big, atoms.weight, atoms.mass, atoms.sigma * big,
                             atoms.kind, atoms.n_protein)
        return proj(scaled, 1, _polar(rng.uniform(0, 0.2) * R, rng)[None])[0]
    if kind == "neighbour":
        centre = proj(atoms, 1, _polar(rng.uniform(0, 0.1) * d, rng)[None],
                      blur=rng.uniform(0.05, 0.15) * d)[0]
        other = sample()
        shift = _polar(R * rng.uniform(0.6, 1.1), rng)[None]
        weight = rng.uniform(1.5, 4.0) * float(atoms.weight.sum() / other.weight.sum())
        return rng.uniform(0.2, 0.6) * centre + weight * proj(other, 1, shift)[0]
    if kind == "overlap":  # aligned on one particle; its random overlapping partners smear
        centre = proj(atoms, 1, _polar(rng.uniform(0, 0.05) * d, rng)[None])[0]
        n, a0 = 12, rng.uniform(0, 2 * math.pi)
        r = torch.from_numpy(rng.uniform(0.35, 0.8, n) * d).float()
        a = torch.from_numpy(a0 + rng.normal(0, rng.uniform(0.2, 0.8), n)).float()
        partners = proj(atoms, n, torch.stack([r * torch.cos(a), r * torch.sin(a)], 1),
                        blur=rng.uniform(0.02, 0.08) * d)
        return centre + rng.uniform(0.6, 1.2) * partners.mean(0)
    if kind == "streak":
        out = torch.zeros(m, m)
        th0 = rng.uniform(0, math.pi)
        parallel = rng.random() < 0.4
        for _ in range(int(rng.integers(1, 5))):
            th = th0 if parallel else rng.uniform(0, math.pi)
            u = x * math.cos(th) + y * math.sin(th) - rng.uniform(-0.8, 0.8) * R
            v = -x * math.sin(th) + y * math.cos(th)
            half_len = rng.uniform(0.5, 3.0) * R
            along = torch.sigmoid((half_len - v.abs()) / 2.0)
            out += rng.uniform(0.5, 2.0) * torch.exp(-0.5 * (u / rng.uniform(0.7, 4.0)) ** 2) * along
        return image(out)
    if kind == "contamination_ring":
        c = _polar(rng.uniform(0, 0.5) * R, rng)
        r = torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2)
        radius = rng.uniform(0.15, 0.8) * R
        ring = torch.exp(-0.5 * ((r - radius) / rng.uniform(0.7, 3.0)) ** 2)
        fill = rng.uniform(0.1, 0.5) * torch.sigmoid((radius - r) / 1.5) if rng.random() < 0.3 else 0
        return image(rng.uniform(1, 3) * (ring + fill))
    raise ValueError(f"unknown junk kind {kind!r}")


def jitter_views(base: torch.Tensor, n: int, view_sigma: float, psi_sigma: float,
                 rng: np.random.Generator) -> torch.Tensor:
    """``(n, 3, 3)`` rotations near ``base``: a view spread then an in-plane error (degrees)."""
    view = small_rotations(n, view_sigma, rng)
    psi = np.radians(rng.normal(0, psi_sigma, n))
    rz = torch.zeros(n, 3, 3)
    rz[:, 0, 0] = rz[:, 1, 1] = torch.from_numpy(np.cos(psi)).float()
    rz[:, 0, 1] = torch.from_numpy(-np.sin(psi)).float()
    rz[:, 1, 0] = torch.from_numpy(np.sin(psi)).float()
    rz[:, 2, 2] = 1.0
    return rz @ base.float() @ view
