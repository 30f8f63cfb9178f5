"""Density volumes from atomic models (PDB/mmCIF, plain or gzipped) and from MRC maps.

Every volume is a cube of ``n`` voxels of ``apix`` Å whose centre (the molecule's centre
of mass, or the map's box centre) sits at voxel index ``n // 2`` — RELION's convention,
which is what :class:`biocnn.sim.project.FourierProjector` rotates about.

Maps have their flat background (the median of the box's outer shell) subtracted and a
soft spherical mask applied before resampling, so projections never show the rotated box
outline. OPM-style ``DUM`` pseudo-atoms (membrane boundary markers) are dropped from
atomic models with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import torch
from scipy import ndimage

from biocnn.errors import BiocnnError, OptionError

__all__ = [
    "ATOMIC_SUFFIXES",
    "MAP_SUFFIXES",
    "Volume",
    "load_volume",
    "atomic_model_volume",
    "map_volume",
    "read_atomic_model",
    "read_map",
    "drop_dummy_atoms",
]

ATOMIC_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
MAP_SUFFIXES = (".mrc", ".map", ".ccp4")

# Aliasing guard for atoms summed on the 2x-finer grid: the extra blur makes every
# Gaussian's spectrum fall below 1e-2 at that grid's Nyquist (B >= 4 ln(100) (2 a_fine)^2).
_BLUR_PER_FINE_APIX2 = 16 * math.log(100.0)
_ATOM_RADIUS = 2.0  # Å added to the farthest atom centre when measuring the molecule


@dataclass(frozen=True)
class Volume:
    """A density cube ready for projection.

    Attributes
    ----------
    data
        ``(n, n, n)`` float32 array indexed ``[z, y, x]``, centred at index ``n // 2``.
    apix
        Voxel size in Å.
    diameter
        Extent of the molecule in Å (twice its largest distance from the centre).
    source
        The file it came from.
    """

    data: np.ndarray
    apix: float
    diameter: float
    source: str


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def structure_kind(path: str | os.PathLike) -> str:
    """``"atomic"`` (PDB/mmCIF) or ``"map"`` (MRC) for an existing structure file; else a
    one-line :class:`BiocnnError`."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise BiocnnError(f"structure file {path} {problem}")
    kind = _suffix(path)
    if kind in ATOMIC_SUFFIXES:
        return "atomic"
    if kind in MAP_SUFFIXES:
        return "map"
    raise BiocnnError(
        f"structure file {path}: unknown format (use {', '.join(ATOMIC_SUFFIXES + MAP_SUFFIXES)})"
    )


def load_volume(
    path: str | os.PathLike, apix: float, box: int, *, keep_waters: bool = False,
    map_apix: float | None = None,
) -> Volume:
    """Read a PDB/mmCIF model or an MRC map as a density cube of ``box`` voxels of ``apix`` Å.

    The cube grows beyond ``box`` (with a warning naming the box needed) when the molecule
    does not fit, so that projections are complete before they are cropped to ``box``.

    Parameters
    ----------
    path
        PDB/mmCIF model (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``) or
        MRC map (``.mrc``, ``.map``, ``.ccp4``).
    apix
        Voxel size of the result in Å.
    box
        Edge of the image box in voxels.
    keep_waters
        Keep water molecules of atomic models (ignored by default).
    map_apix
        Voxel size (Å) of a map, overriding its header (for maps whose header has none);
        ``None`` or 0 reads the header.

    Returns
    -------
    Volume
        ``data`` of shape ``(n, n, n)`` with ``n >= box``.
    """
    path = Path(path)
    if structure_kind(path) == "atomic":
        return atomic_model_volume(read_atomic_model(path, keep_waters=keep_waters), apix, box,
                                   source=str(path))
    return map_volume(path, apix, box, map_apix=map_apix)


def read_atomic_model(path: str | os.PathLike, *, keep_waters: bool = False) -> gemmi.Structure:
    """Read the first model of a PDB/mmCIF file with gemmi (waters and alt. confs removed).

    Returns
    -------
    gemmi.Structure
        A structure whose first model has at least one atom.
    """
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as exc:
        raise BiocnnError(f"cannot read structure {path}: {str(exc).splitlines()[0]}") from None
    if not keep_waters:
        st.remove_waters()
    dropped = drop_dummy_atoms(st)
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} DUM pseudo-atoms (OPM membrane markers, not "
                      "mass)", stacklevel=2)
    st.remove_alternative_conformations()
    st.remove_empty_chains()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise BiocnnError(f"structure file {path} contains no atoms")
    return st


def drop_dummy_atoms(structure: gemmi.Structure) -> int:
    """Remove residues named ``DUM`` (OPM membrane-boundary pseudo-atoms); return atoms removed."""
    removed = 0
    for model in structure:
        for chain in model:
            for i in reversed(range(len(chain))):
                if chain[i].name.strip().upper() == "DUM":
                    removed += len(chain[i])
                    del chain[i]
    return removed


def _box_for(diameter: float, apix: float, box: int, source: str) -> int:
    """Cube edge (voxels) holding a molecule of ``diameter`` Å; warns when above ``box``."""
    needed = math.ceil(diameter / apix)
    if needed <= box:
        return box
    warnings.warn(
        f"{source}: molecule ({diameter:.0f} Å across) does not fit in the {box} px box "
        f"({box * apix:.0f} Å at {apix:g} Å/px); images will be truncated, use --box >= {needed}",
        stacklevel=3,
    )
    return needed


def atomic_model_volume(
    structure: gemmi.Structure, apix: float, box: int, *, source: str = "model"
) -> Volume:
    """Electron-scattering density of a gemmi structure, centred on its centre of mass.

    Atoms are summed as 5-Gaussian electron scattering factors (gemmi's
    ``DensityCalculatorE``, blurred by each atom's B-factor) on a grid twice as fine as
    ``apix`` with an extra anti-aliasing blur; that blur is then divided out in Fourier
    space while the spectrum is cropped to ``apix`` and band-limited to its Nyquist sphere.

    Parameters
    ----------
    structure
        Its first model is used (the structure is not modified).
    apix
        Voxel size in Å.
    box
        Minimum cube edge in voxels.
    source
        Name used in warnings.

    Returns
    -------
    Volume
        ``data`` of shape ``(n, n, n)``, ``n = max(box, molecule diameter / apix)``.
    """
    model = structure[0].clone()
    xyz = np.array([cra.atom.pos.tolist() for cra in model.all()])  # (A, 3)
    mass = np.array([cra.atom.element.weight * cra.atom.occ for cra in model.all()])  # (A,)
    com = (xyz * mass[:, None]).sum(0) / max(mass.sum(), 1e-12)
    diameter = 2.0 * (float(np.linalg.norm(xyz - com, axis=1).max()) + _ATOM_RADIUS)
    n = _box_for(diameter, apix, box, source)

    length = n * apix
    centre = (n // 2) * apix
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(centre - com))))
    calc = gemmi.DensityCalculatorE()
    calc.grid.set_unit_cell(gemmi.UnitCell(length, length, length, 90, 90, 90))
    calc.grid.set_size(2 * n, 2 * n, 2 * n)
    calc.blur = _BLUR_PER_FINE_APIX2 * (apix / 2) ** 2
    calc.add_model_density_to_grid(model)
    fine = torch.from_numpy(np.array(calc.grid, dtype=np.float32).transpose(2, 1, 0).copy())

    spec = torch.fft.rfftn(fine)  # (2n, 2n, n + 1)
    keep = torch.cat([torch.arange(0, (n + 1) // 2), torch.arange(2 * n - n // 2, 2 * n)])
    spec = spec[keep][:, keep][:, :, : n // 2 + 1]  # (n, n, n // 2 + 1)
    fz = torch.fft.fftfreq(n, d=apix)
    fx = torch.fft.rfftfreq(n, d=apix)
    s2 = fz[:, None, None] ** 2 + fz[None, :, None] ** 2 + fx[None, None, :] ** 2
    unblur = torch.exp(calc.blur * s2 / 4) * (s2 <= (0.5 / apix) ** 2)
    vol = torch.fft.irfftn(spec * unblur, s=(n, n, n)) / 8.0
    return Volume(vol.numpy().astype(np.float32), float(apix), diameter, source)


def read_map(path: str | os.PathLike, map_apix: float | None = None) -> tuple[np.ndarray, float]:
    """Read a 3D MRC map as ``(Z, Y, X)`` float32, background-subtracted and softly masked.

    The background is the median of the box's outer 2-voxel shell (a flat offset of the
    map becomes 0); a soft spherical mask (raised cosine over the outer 10 % of the radius)
    then removes the box corners, so rotated projections show no box outline.

    Parameters
    ----------
    path
        MRC/CCP4 file holding a ``(Z, Y, X)`` volume.
    map_apix
        Voxel size in Å overriding the header (``None``/0: header; a header without one is
        an error asking for ``map_apix``).

    Returns
    -------
    data, apix
        The map and its voxel size in Å.
    """
    path = Path(path)
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = None if mrc.data is None else np.asarray(mrc.data, dtype=np.float32)
            stack = mrc.is_image_stack()
            in_apix = float(mrc.voxel_size.x)
            axes = (int(mrc.header.maps), int(mrc.header.mapr), int(mrc.header.mapc))
    except (ValueError, OSError) as exc:
        raise BiocnnError(f"cannot read map {path}: {exc}") from None
    if data is None or data.ndim != 3 or stack or min(data.shape) < 2:
        shape = "no data" if data is None else f"shape {data.shape}"
        raise BiocnnError(f"map {path} is not a 3D volume ({shape})")
    if sorted(axes) == [1, 2, 3]:  # file axes -> (Z, Y, X)
        data = np.transpose(data, [axes.index(3), axes.index(2), axes.index(1)])
    if not np.isfinite(data).all():
        raise BiocnnError(f"map {path} has non-finite density")
    if map_apix:
        in_apix = float(map_apix)
    elif in_apix <= 0:
        raise OptionError("structures", path, "map has no voxel size in its header", fix="map_apix")
    shell = np.ones(data.shape, dtype=bool)
    shell[2:-2, 2:-2, 2:-2] = False
    data = data - np.median(data[shell])
    idx = [np.arange(s, dtype=np.float32) - s // 2 for s in data.shape]
    r = np.sqrt(idx[0][:, None, None] ** 2 + idx[1][None, :, None] ** 2 + idx[2][None, None, :] ** 2)
    radius = min(data.shape) / 2 - 1
    t = np.clip((r - 0.9 * radius) / (0.1 * radius), 0, 1)
    data = (data * 0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)
    if data.max() <= 0:
        raise BiocnnError(f"map {path} has no positive density above its background")
    return data, in_apix


def map_volume(
    path: str | os.PathLike, apix: float, box: int, *, map_apix: float | None = None
) -> Volume:
    """Read a 3D MRC map (see :func:`read_map`) and resample it to ``apix`` Å on a cube.

    Downsampling is preceded by a Gaussian anti-aliasing filter; resampling uses cubic
    splines. The molecule's extent is measured from voxels above 10 % of the maximum.

    Parameters
    ----------
    path
        MRC/CCP4 file holding a ``(Z, Y, X)`` volume.
    apix
        Voxel size of the result in Å.
    box
        Minimum cube edge in voxels.
    map_apix
        Voxel size of the file in Å, overriding its header.

    Returns
    -------
    Volume
        ``data`` of shape ``(n, n, n)``.
    """
    path = Path(path)
    data, in_apix = read_map(path, map_apix)
    centre_in = np.array([s // 2 for s in data.shape], dtype=np.float64)
    inside = np.argwhere(data > 0.1 * data.max())
    radius = float(np.linalg.norm(inside - centre_in, axis=1).max()) * in_apix
    diameter = 2.0 * (radius + in_apix)
    n = _box_for(diameter, apix, box, str(path))

    ratio = apix / in_apix
    if ratio > 1.0:
        data = ndimage.gaussian_filter(data, sigma=0.375 * ratio)
    grid = (np.arange(n) - n // 2) * ratio
    coords = np.stack(np.meshgrid(grid, grid, grid, indexing="ij")) + centre_in[:, None, None, None]
    vol = ndimage.map_coordinates(data, coords, order=3, mode="constant", cval=0.0)
    return Volume(vol.astype(np.float32), float(apix), diameter, str(path))
