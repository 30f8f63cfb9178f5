"""Procedural pseudo-atomic models and their fast rendering (volumes and direct projections).

A model is a cloud of pseudo-atoms (Gaussian blobs of ~110 Da, one per residue up to
20,000 beads, heavier beads above) filling a union of ellipsoidal domains at protein
density (0.81 Da/Å^3), their weights modulated by a smooth +-30 % field (wavelengths
12-40 Å) for internal contrast. Kinds, drawn with equal shares by :func:`random_model`:

=============  =====================================================================
``globular``   one near-spherical domain (axis ratios <= 1.4) with 3-8 surface lobes
``elongated``  a rod of 3-7 overlapping domains along a gently bent axis, 2.5-6x long
``multidomain`` 2-5 domains of unequal size packed by a touching random walk
``ring``       C3-C8 subunits on a circle with a central hole (toroidal oligomers)
``oligomer``   compact symmetric assemblies, C2-C8 or D2 (dimer of dimers)
``filament``   a helical segment: 6-20 subunits, rise 0.3-0.6 and twist 20-170 deg/subunit
``membrane``   a transmembrane domain with a soluble domain, in a detergent micelle or a
               nanodisc (lipid disc + scaffold belt); the lipid/detergent beads carry 0.25
               of protein contrast and are not counted in ``mass``
=============  =====================================================================

Masses are log-uniform in 50 kDa - 4 MDa. Everything is drawn from a ``numpy`` generator,
so a seed fixes the model. Rendering splats the beads trilinearly (volumes, for the
Fourier projector) or bilinearly after rotating them (projections, exact for Gaussian
blobs: the projection of a 3D Gaussian is a 2D Gaussian); the splat kernel is divided
out in Fourier space and the Gaussian applied there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from biocnn.errors import BiocnnError

__all__ = [
    "MODEL_KINDS",
    "PROTEIN_DENSITY",
    "PseudoAtoms",
    "random_model",
    "make_model",
    "atoms_from_structure",
    "atoms_volume",
    "project_atoms",
]

MODEL_KINDS = ("globular", "elongated", "multidomain", "ring", "oligomer", "filament", "membrane")
PROTEIN_DENSITY = 0.81  # Da per Å^3 (partial specific volume 0.74 cm^3/g)
_RESIDUE_DA = 110.0
_MAX_BEADS = 20_000
_LIPID_CONTRAST = 0.25  # detergent/lipid contrast against ice relative to protein


@dataclass(frozen=True)
class PseudoAtoms:
    """A pseudo-atomic model centred on its centre of mass.

    Attributes
    ----------
    xyz
        ``(N, 3)`` float32 positions in Å, ``(x, y, z)``.
    weight
        ``(N,)`` float32 scattering weight of each bead (Da for protein beads).
    mass
        Protein mass in Da (lipid/detergent beads excluded).
    sigma
        Gaussian blob standard deviation in Å.
    kind
        Model kind (one of :data:`MODEL_KINDS`) or the source file name.
    n_protein
        The first ``n_protein`` beads are protein (the rest lipid/detergent); -1 = all.
    """

    xyz: torch.Tensor
    weight: torch.Tensor
    mass: float
    sigma: float
    kind: str
    n_protein: int = -1

    @property
    def diameter(self) -> float:
        """Twice the largest bead distance from the centre, plus two blob widths (Å)."""
        return 2.0 * float(self.xyz.norm(dim=1).max()) + 4.0 * self.sigma


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class _Ellipsoid:
    centre: np.ndarray  # (3,)
    axes: np.ndarray  # (3,) semi-axes in Å
    rot: np.ndarray  # (3, 3) body -> world

    @property
    def volume(self) -> float:
        return 4.0 / 3.0 * math.pi * float(np.prod(self.axes))

    def contains(self, p: np.ndarray) -> np.ndarray:
        body = (p - self.centre) @ self.rot
        return ((body / self.axes) ** 2).sum(1) <= 1.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        body = d * rng.random((n, 1)) ** (1.0 / 3.0) * self.axes
        return body @ self.rot.T + self.centre


def _fill(domains: list[_Ellipsoid], n_beads: int, rng: np.random.Generator) -> np.ndarray:
    """Beads uniform in the union of ``domains`` (overlaps counted once). ``(M, 3)``."""
    total = sum(d.volume for d in domains)
    pts = []
    for i, d in enumerate(domains):
        p = d.sample(max(1, round(n_beads * d.volume / total)), rng)
        for prev in domains[:i]:  # only domains whose bounding spheres meet can overlap
            if np.linalg.norm(prev.centre - d.centre) < prev.axes.max() + d.axes.max():
                p = p[~prev.contains(p)]
        pts.append(p)
    return np.concatenate(pts)


def _radius(mass: float) -> float:
    """Radius (Å) of a sphere of protein of ``mass`` Da."""
    return (3.0 * mass / PROTEIN_DENSITY / (4.0 * math.pi)) ** (1.0 / 3.0)


def _axes(rng: np.random.Generator, volume: float, max_ratio: float) -> np.ndarray:
    """Semi-axes of an ellipsoid of ``volume`` Å^3 with axis ratios up to ``max_ratio``."""
    ratios = np.exp(rng.uniform(0.0, math.log(max_ratio), 3))
    return ratios * (3.0 * volume / (4.0 * math.pi) / np.prod(ratios)) ** (1.0 / 3.0)


def _subunit(mass: float, rng: np.random.Generator, lobes: int = 2) -> list[_Ellipsoid]:
    """A small multi-lobed subunit centred near the origin, in its own frame."""
    vol = mass / PROTEIN_DENSITY
    core = _Ellipsoid(np.zeros(3), _axes(rng, 0.7 * vol, 1.6), _random_rotation(rng))
    out = [core]
    for _ in range(lobes):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        axes = _axes(rng, 0.3 * vol / lobes, 1.5)
        out.append(_Ellipsoid(direction * core.axes.mean() * 0.8, axes, _random_rotation(rng)))
    return out


def _symmetric(sub: list[_Ellipsoid], ops: list[np.ndarray], offset: np.ndarray) -> list[_Ellipsoid]:
    """Copies of a subunit placed at ``offset`` and moved by each symmetry operator."""
    return [_Ellipsoid(op @ (e.centre + offset), e.axes, op @ e.rot) for op in ops for e in sub]


def _domains(kind: str, mass: float, rng: np.random.Generator) -> tuple[list[_Ellipsoid],
                                                                      list[_Ellipsoid]]:
    """Protein domains and lipid/detergent domains (membrane kind only) of a model."""
    vol = mass / PROTEIN_DENSITY
    lipid: list[_Ellipsoid] = []
    if kind == "globular":
        core = _Ellipsoid(np.zeros(3), _axes(rng, 0.85 * vol, 1.4), _random_rotation(rng))
        doms = [core]
        n = int(rng.integers(3, 9))
        for _ in range(n):
            d = rng.standard_normal(3)
            d /= np.linalg.norm(d)
            doms.append(_Ellipsoid(d * core.axes * 0.9, _axes(rng, 0.15 * vol / n, 1.5),
                                   _random_rotation(rng)))
    elif kind == "elongated":
        n = int(rng.integers(3, 8))
        ratio = rng.uniform(2.5, 6.0)
        width = (vol / (math.pi * ratio * 2)) ** (1.0 / 3.0)  # rod: length ~ 2 ratio width
        length = 2.0 * ratio * width
        bend = rng.uniform(-0.4, 0.4, 2)
        doms = []
        for t in np.linspace(-0.5, 0.5, n):
            c = np.array([bend[0] * t**2 * length, bend[1] * t**2 * length, t * length])
            axes = np.array([width, width, 0.65 * length / (n - 1)]) * rng.uniform(0.85, 1.2, 3)
            doms.append(_Ellipsoid(c, axes, _rot_z(rng.uniform(0, 2 * math.pi))))
    elif kind == "multidomain":
        n = int(rng.integers(2, 6))
        masses = rng.dirichlet(np.full(n, 2.0)) * vol
        doms = []
        pos = np.zeros(3)
        for i, v in enumerate(masses):
            axes = _axes(rng, v, 1.8)
            if i:
                step = rng.standard_normal(3)
                step /= np.linalg.norm(step)
                pos = pos + step * (doms[-1].axes.mean() + axes.mean()) * 0.85
            doms.append(_Ellipsoid(pos.copy(), axes, _random_rotation(rng)))
    elif kind in ("ring", "oligomer"):
        n = int(rng.integers(3, 9)) if kind == "ring" else int(rng.integers(2, 9))
        dihedral = kind == "oligomer" and rng.random() < 0.25
        copies = 4 if dihedral else n
        sub = _subunit(mass / copies, rng, lobes=int(rng.integers(1, 4)))
        r_sub = _radius(mass / copies)
        if dihedral:
            flip = [np.diag([1.0, 1.0, 1.0]), np.diag([1.0, -1.0, -1.0])]
            ops = [f @ _rot_z(math.pi * k) for f in flip for k in range(2)]
            offset = np.array([r_sub * 0.9, r_sub * 0.2, r_sub * 0.8])
        else:
            ops = [_rot_z(2 * math.pi * k / n) for k in range(n)]
            # ring: subunits side by side on a circle with a hole; oligomer: packed tight
            spread = rng.uniform(0.9, 1.15) if kind == "ring" else rng.uniform(0.55, 0.85)
            radius = spread * r_sub / math.sin(math.pi / n)
            offset = np.array([radius, 0.0, rng.uniform(-0.3, 0.3) * r_sub])
        doms = _symmetric(sub, ops, offset)
    elif kind == "filament":
        n = int(rng.integers(6, 21))
        sub = _subunit(mass / n, rng, lobes=int(rng.integers(1, 3)))
        r_sub = _radius(mass / n)
        rise = rng.uniform(0.3, 0.6) * r_sub
        twist = math.radians(rng.uniform(20.0, 170.0))
        offset = np.array([rng.uniform(0.5, 1.2) * r_sub, 0.0, 0.0])
        doms = []
        for k in range(n):
            op = _rot_z(twist * k)
            doms += [_Ellipsoid(op @ (e.centre + offset) + np.array([0, 0, rise * (k - n / 2)]),
                                e.axes, op @ e.rot) for e in sub]
    elif kind == "membrane":
        tm_frac = rng.uniform(0.3, 0.8)
        tm_axes = _axes(rng, tm_frac * vol, 1.5)
        tm_axes[2] = max(tm_axes[2], 16.0)
        tm = _Ellipsoid(np.zeros(3), tm_axes, _rot_z(rng.uniform(0, 2 * math.pi)))
        sol_axes = _axes(rng, (1 - tm_frac) * vol, 1.6)
        sol = _Ellipsoid(np.array([0.0, 0.0, tm_axes[2] + 0.7 * sol_axes[2]]), sol_axes,
                         _rot_z(rng.uniform(0, 2 * math.pi)))
        doms = [tm, sol]
        r_tm = float(max(tm_axes[0], tm_axes[1]))
        if rng.random() < 0.6:  # detergent micelle: oblate ellipsoid around the TM domain
            thick = rng.uniform(18.0, 25.0)
            lipid = [_Ellipsoid(np.zeros(3), np.array([r_tm + thick, r_tm + thick, thick]),
                                np.eye(3))]
        else:  # nanodisc: lipid disc ~ 45-65 Å radius, 20 Å half-thickness, plus a scaffold belt
            rad = r_tm + rng.uniform(20.0, 40.0)
            lipid = [_Ellipsoid(np.zeros(3), np.array([rad, rad, 20.0]), np.eye(3))]
            belt = [_Ellipsoid(np.array([rad * math.cos(a), rad * math.sin(a), 0.0]),
                               np.array([6.0, 6.0, 12.0]), np.eye(3))
                    for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
            lipid += belt
    else:
        raise BiocnnError(f"procedural model kind {kind!r} unknown (use {', '.join(MODEL_KINDS)})")
    return doms, lipid


def make_model(kind: str, mass: float, rng: np.random.Generator) -> PseudoAtoms:
    """A pseudo-atomic model of ``kind`` and protein ``mass`` (Da), centred on its mass.

    Bead mass is one residue (110 Da) up to 20,000 beads and heavier beyond, so the
    protein beads sum to exactly ``mass``; the blob width follows the bead spacing.
    """
    if not 1e3 <= mass <= 1e8:
        raise BiocnnError(f"procedural model mass must be in [1 kDa, 100 MDa], got {mass:g} Da")
    doms, lipid = _domains(kind, mass, rng)
    n_beads = int(min(_MAX_BEADS, max(50, mass / _RESIDUE_DA)))
    protein = _fill(doms, n_beads, rng)
    # internal contrast (domains, cavities, dense cores): a smooth +-30 % density field
    k = rng.standard_normal((6, 3))
    k *= (1.0 / rng.uniform(12.0, 40.0, 6) / np.linalg.norm(k, axis=1))[:, None]
    field = np.cos(2 * np.pi * protein @ k.T + rng.uniform(0, 2 * np.pi, 6)).sum(1)
    w = np.clip(1.0 + 0.3 * field / max(field.std(), 1e-9), 0.2, None)
    weights = [w * mass / w.sum()]
    pts = [protein]
    if lipid:
        lipid_vol = sum(d.volume for d in lipid)
        n_lipid = max(50, round(n_beads * lipid_vol / (mass / PROTEIN_DENSITY)))
        lip = _fill(lipid, n_lipid, rng)
        lip = lip[~np.any([d.contains(lip) for d in doms], axis=0)]  # protein displaces lipid
        per_bead = _LIPID_CONTRAST * PROTEIN_DENSITY * lipid_vol / max(n_lipid, 1)
        pts.append(lip)
        weights.append(np.full(len(lip), per_bead))
    xyz = np.concatenate(pts)
    w_all = np.concatenate(weights)
    com = (protein * weights[0][:, None]).sum(0) / mass
    spacing = (mass / PROTEIN_DENSITY / len(protein)) ** (1.0 / 3.0)
    return PseudoAtoms(torch.from_numpy((xyz - com).astype(np.float32)),
                       torch.from_numpy(w_all.astype(np.float32)), float(mass),
                       float(max(2.0, 0.6 * spacing)), kind, len(protein))


def random_model(rng: np.random.Generator, mass_range: tuple[float, float] = (5e4, 4e6),
                 kinds: tuple[str, ...] = MODEL_KINDS) -> PseudoAtoms:
    """A model of a random kind (equal shares) and log-uniform mass in ``mass_range`` (Da)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    mass = math.exp(rng.uniform(math.log(mass_range[0]), math.log(mass_range[1])))
    return make_model(kind, mass, rng)


def atoms_from_structure(structure: object, kind: str = "model") -> PseudoAtoms:
    """Atoms of a gemmi structure's first model as Gaussian blobs weighted by atomic mass."""
    model = structure[0]  # type: ignore[index]
    xyz = np.array([cra.atom.pos.tolist() for cra in model.all()], dtype=np.float64)
    w = np.array([cra.atom.element.weight * cra.atom.occ for cra in model.all()])
    com = (xyz * w[:, None]).sum(0) / max(w.sum(), 1e-12)
    return PseudoAtoms(torch.from_numpy((xyz - com).astype(np.float32)),
                       torch.from_numpy(w.astype(np.float32)), float(w.sum()), 1.5, kind)


def _splat_kernel_ft(n: int, dims: int, sigma_px: float) -> torch.Tensor:
    """Gaussian over the linear-splat transfer (sinc^2 per axis) on an rfft grid of ``dims`` D."""
    f = torch.fft.fftfreq(n)
    fr = torch.fft.rfftfreq(n)
    axes = [f] * (dims - 1) + [fr]
    grids = torch.meshgrid(*axes, indexing="ij")
    k2 = sum(g**2 for g in grids)
    apod = math.prod(torch.sinc(g) ** 2 for g in grids)
    return torch.exp(-2 * math.pi**2 * sigma_px**2 * k2) / apod


def _linear_splat(coords: torch.Tensor, weight: torch.Tensor, n: int, batch: int) -> torch.Tensor:
    """Scatter weights at ``(batch, N, D)`` fractional voxel coords (D = 2 or 3) linearly.

    Returns ``(batch, n, ..., n)`` with the same weight sum for beads inside the grid.
    """
    dims = coords.shape[-1]
    base_f = torch.floor(coords)
    frac = coords - base_f
    base = base_f.long()
    total = batch * n**dims
    out = torch.zeros(total + 1, dtype=torch.float32)  # the last bin collects beads outside
    b_off = (torch.arange(batch) * n**dims)[:, None]
    for corner in range(2**dims):
        flat = b_off.expand(batch, coords.shape[1]).clone()
        valid = torch.ones_like(flat, dtype=torch.bool)
        w = weight.expand(batch, -1)
        for d in range(dims):  # coords are (x, y[, z]); memory is [z,] y, x
            bit = (corner >> d) & 1
            idx = base[..., d] + bit
            valid &= (idx >= 0) & (idx < n)
            flat += idx * n**d
            w = w * (frac[..., d] if bit else 1.0 - frac[..., d])
        out.index_add_(0, torch.where(valid, flat, total).flatten(), w.flatten())
    return out[:total].view(batch, *([n] * dims))


def atoms_volume(atoms: PseudoAtoms, apix: float, box: int) -> torch.Tensor:
    """Density cube of the model: ``(box, box, box)`` float32 ``[z, y, x]``, centre at ``box // 2``.

    Bead weights are conserved (the volume sums to the total weight). Beads outside the
    cube are dropped.
    """
    coords = (atoms.xyz / apix + box // 2)[None]
    grid = _linear_splat(coords, atoms.weight, box, 1)[0]
    kernel = _splat_kernel_ft(box, 3, atoms.sigma / apix)
    return torch.fft.irfftn(torch.fft.rfftn(grid) * kernel, s=(box, box, box))


def project_atoms(
    atoms: PseudoAtoms,
    rotations: torch.Tensor,
    apix: float,
    size: int,
    shifts: torch.Tensor | None = None,
    extra_sigma: float = 0.0,
) -> torch.Tensor:
    """Projection spectra of the model along RELION orientations, without a volume.

    Image coordinates are ``A v`` (``A`` from :func:`biocnn.sim.project.euler_to_matrix`),
    projected along z, as :class:`biocnn.sim.project.FourierProjector` does.

    Parameters
    ----------
    rotations
        ``(B, 3, 3)`` matrices.
    apix, size
        Image pixel size (Å) and edge (px).
    shifts
        ``(B, 2)`` model-centre positions ``(dx, dy)`` in pixels from the image centre.
    extra_sigma
        Extra Gaussian blur in Å (added in quadrature to the blob width).

    Returns
    -------
    torch.Tensor
        ``(B, size, size // 2 + 1)`` complex64 spectra (rfft2 layout, origin at the centre
        pixel, see :func:`biocnn.sim.project.images_to_spectra`); projection of weight per
        pixel.
    """
    b = rotations.shape[0]
    xy = (atoms.xyz[None] @ rotations.float().transpose(1, 2))[..., :2] / apix + size // 2
    if shifts is not None:
        xy = xy + shifts.float()[:, None, :]
    grid = _linear_splat(xy, atoms.weight, size, b)
    sigma_px = math.sqrt(atoms.sigma**2 + extra_sigma**2) / apix
    spec = torch.fft.rfft2(torch.fft.ifftshift(grid, dim=(-2, -1)))
    return spec * _splat_kernel_ft(size, 2, sigma_px)
