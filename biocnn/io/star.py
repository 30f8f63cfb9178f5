"""RELION STAR particle tables: read (RELION 3.0 and 3.1+) and write (RELION 3.1).

A RELION 3.0 file has one data block of particles. A RELION 3.1+ file has a
``data_optics`` block (one row per optics group, with ``rlnImagePixelSize``) and a
``data_particles`` block whose ``rlnOpticsGroup`` column points into it. Particle images
are named ``index@stack.mrcs`` with a 1-based index, or by a plain file name for a
single-image file; relative paths are resolved against the STAR file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError

__all__ = [
    "StarTable",
    "read_star",
    "write_star",
    "parse_image_name",
    "format_image_name",
    "optics_block",
]

IMAGE_COLUMN = "rlnImageName"


def parse_image_name(name: str, star: str | os.PathLike = "STAR file") -> tuple[int, str]:
    """Split a RELION image name into ``(section, path)`` with a 0-based section.

    ``"000012@Extract/a.mrcs"`` -> ``(11, "Extract/a.mrcs")``; ``"img.mrc"`` -> ``(0, "img.mrc")``.
    ``star`` names the file in the error raised for a malformed name.
    """
    name = str(name).strip()
    if "@" not in name:
        return 0, name
    index, _, path = name.partition("@")
    if not index.isdigit() or int(index) < 1 or not path:
        raise BiocnnError(f"{star}: bad image name {name!r} (want index@file, index >= 1)")
    return int(index) - 1, path


def format_image_name(section: int, path: str | os.PathLike) -> str:
    """Inverse of :func:`parse_image_name` for stacks: ``(11, "a.mrcs")`` -> ``"000012@a.mrcs"``."""
    return f"{section + 1:06d}@{os.fspath(path)}"


@dataclass(eq=False)
class StarTable:
    """A particle table read from a STAR file.

    Attributes
    ----------
    path
        The STAR file.
    particles
        One row per particle; always has ``rlnImageName``.
    optics
        The optics table (RELION 3.1+) or None (RELION 3.0).
    """

    path: Path
    particles: pd.DataFrame
    optics: pd.DataFrame | None

    def __len__(self) -> int:
        return len(self.particles)

    def column(self, name: str) -> pd.Series:
        """The particle column ``name``; a missing column is a one-line :class:`BiocnnError`."""
        if name not in self.particles.columns:
            cols = ", ".join(map(str, self.particles.columns))
            raise BiocnnError(f"{self.path}: no column {name!r} in the particles (have: {cols})")
        return self.particles[name]

    def image_refs(self) -> tuple[list[Path], np.ndarray]:
        """Resolve every ``rlnImageName``.

        Returns
        -------
        paths : list[Path]
            ``(N,)`` image files; relative names are looked up next to the STAR file,
            then in its parent folders (a RELION project) and the working directory.
        sections : np.ndarray
            ``(N,)`` int64 0-based section in each file.
        """
        paths: list[Path] = []
        sections = np.empty(len(self.particles), dtype=np.int64)
        resolved: dict[str, Path] = {}
        for i, name in enumerate(self.column(IMAGE_COLUMN).tolist()):
            sections[i], rel = parse_image_name(name, self.path)
            if rel not in resolved:
                resolved[rel] = self._locate(rel)
            paths.append(resolved[rel])
        return paths, sections

    def _locate(self, rel: str | Path) -> Path:
        """Find a relative image path: next to the STAR file first, then (RELION projects
        name stacks relative to the project folder, e.g. ``Extract/job007/...`` from
        ``Class2D/job012/run_data.star``) in each parent folder and the working directory.
        Falls back to the STAR file's folder, so a missing stack is reported there."""
        rel = Path(rel)
        if rel.is_absolute():
            return rel
        for base in (self.path.parent, *self.path.parent.resolve().parents, Path.cwd()):
            if (base / rel).exists():
                return base / rel
        return self.path.parent / rel

    def pixel_sizes(self) -> np.ndarray:
        """``(N,)`` float64 pixel size per particle in Å (0 = not in the STAR file).

        RELION 3.1+: ``rlnImagePixelSize`` of the particle's optics group. RELION 3.0:
        ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification`` when both are present.
        """
        parts = self.particles
        if self.optics is not None and "rlnImagePixelSize" in self.optics.columns:
            if "rlnOpticsGroup" in parts.columns and "rlnOpticsGroup" in self.optics.columns:
                table = dict(
                    zip(
                        self.optics["rlnOpticsGroup"].astype(int),
                        self.optics["rlnImagePixelSize"].astype(float),
                        strict=True,
                    )
                )
                groups = parts["rlnOpticsGroup"].astype(int)
                missing = sorted(set(groups) - set(table))
                if missing:
                    raise BiocnnError(f"{self.path}: optics group {missing[0]} not in data_optics")
                return groups.map(table).to_numpy(dtype=np.float64)
            if len(self.optics) == 1:
                return np.full(len(parts), float(self.optics["rlnImagePixelSize"].iloc[0]))
        if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(parts.columns):
            det = parts["rlnDetectorPixelSize"].to_numpy(dtype=np.float64)
            mag = parts["rlnMagnification"].to_numpy(dtype=np.float64)
            return np.divide(det * 1e4, mag, out=np.zeros_like(det), where=mag > 0)
        return np.zeros(len(parts))


def read_star(path: str | os.PathLike) -> StarTable:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    The particle block is ``data_particles`` if present, else the only block that has an
    ``rlnImageName`` column; ``data_optics`` is kept when present. Errors (missing file,
    not a STAR file, no particle block) are one-line :class:`BiocnnError`.
    """
    path = Path(path)
    if not path.is_file():
        raise BiocnnError(f"STAR file {path} not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors
        raise BiocnnError(
            f"{path}: not a readable STAR file ({' '.join(str(exc).split())})"
        ) from exc
    tables = {
        name: block if isinstance(block, pd.DataFrame) else pd.DataFrame([block])
        for name, block in blocks.items()
    }
    if "particles" in tables:
        particles = tables["particles"]
    else:
        candidates = [t for t in tables.values() if IMAGE_COLUMN in t.columns]
        if len(candidates) != 1:
            raise BiocnnError(
                f"{path}: no particle block with {IMAGE_COLUMN} "
                f"(blocks: {', '.join(repr(n) for n in tables) or 'none'})"
            )
        particles = candidates[0]
    if IMAGE_COLUMN not in particles.columns:
        raise BiocnnError(f"{path}: the particle block has no {IMAGE_COLUMN} column")
    return StarTable(
        path=path, particles=particles.reset_index(drop=True), optics=tables.get("optics")
    )


def optics_block(apix: float, image_size: int, name: str = "opticsGroup1") -> pd.DataFrame:
    """A one-group RELION 3.1 optics table for 2D images of ``image_size`` px at ``apix`` Å."""
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [name],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [float(apix)],
            "rlnImageSize": [int(image_size)],
            "rlnImageDimensionality": [2],
        }
    )


def write_star(
    path: str | os.PathLike,
    particles: pd.DataFrame,
    optics: pd.DataFrame | None = None,
    *,
    apix: float = 0.0,
    image_size: int = 0,
) -> Path:
    """Atomically write a RELION 3.1 STAR file with ``data_optics`` and ``data_particles``.

    Parameters
    ----------
    path
        Destination ``.star`` file.
    particles
        One row per particle (normally with ``rlnImageName``). A missing
        ``rlnOpticsGroup`` column is added with every particle in group 1.
    optics
        Optics table to write as is (e.g. the one read from the input STAR file); if None,
        a single group is made from ``apix`` and ``image_size`` (see :func:`optics_block`).
    apix, image_size
        Pixel size (Å) and box (px) of the synthesised optics group.
    """
    if optics is None:
        optics = optics_block(apix, image_size)
    if "rlnOpticsGroup" not in particles.columns:
        particles = particles.assign(rlnOpticsGroup=1)
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write({"optics": optics, "particles": particles}, tmp)
    return Path(path)
