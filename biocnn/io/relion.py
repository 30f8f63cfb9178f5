"""RELION-ready particle STAR files (RELION 3.1, 4 and 5) and the External job protocol.

What RELION 3.1+ needs from a particle STAR file, and how biocnn provides it:

* **A complete optics table**: ``rlnOpticsGroupName``, ``rlnOpticsGroup``,
  ``rlnImagePixelSize``, ``rlnImageSize``, ``rlnImageDimensionality``, ``rlnVoltage``,
  ``rlnSphericalAberration`` and ``rlnAmplitudeContrast``. A RELION 3.0 input carries the last
  three per particle: they are copied into the optics table (one group per distinct
  combination, or per existing ``rlnOpticsGroup``). Values nobody recorded take the defaults
  :data:`OPTICS_DEFAULTS` (300 kV, 2.7 mm, 0.1: the most common microscope setting) and the
  caller is told which ones were defaulted, so it can warn.
* **Image names RELION can open**: RELION resolves ``rlnImageName`` from the project folder
  (where the GUI runs), not from the STAR file's folder. Names are written relative to the
  project folder when the file lies inside it, else as absolute paths; a name that already
  resolves from the project folder to the same file is kept as it was.
* **Input rows unchanged**: every input column keeps its values; predictions go to new
  ``biocnn`` columns (:func:`add_predictions`), never to RELION labels such as
  ``rlnClassNumber``. RELION 3.1+ reads unknown labels with a warning and keeps them
  ("will ignore (but maintain) values for the unknown label"). 3.0-style origins in pixels
  (``rlnOriginX/Y``) gain their 3.1 counterparts in Å (``rlnOriginX/YAngst``), which
  RELION 3.1+ reads instead.

External jobs (RELION's "External" job type): RELION runs the program from the project
folder as ``PROGRAM --o External/jobNNN/ --in_parts particles.star --j N [--param value ...]``;
the program writes its outputs into the job folder, lists them in
``RELION_OUTPUT_NODES.star`` (:func:`write_output_nodes`) and creates
``RELION_JOB_EXIT_SUCCESS`` or ``RELION_JOB_EXIT_FAILURE`` there (:func:`mark_exit`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from biocnn.errors import BiocnnError
from biocnn.io.star import format_image_name, parse_image_name, write_star_blocks

__all__ = [
    "OPTICS_DEFAULTS",
    "PARTICLES_NODE_TYPE",
    "PARTICLES_NODE_LABEL",
    "PREFIX",
    "relion_name",
    "rebase_names",
    "complete_optics",
    "add_predictions",
    "prediction_columns",
    "write_output_nodes",
    "mark_exit",
]

#: Optics values used when neither the input nor its headers record them (documented in
#: the module docstring and the ``predict`` help): 300 kV, Cs 2.7 mm, amplitude contrast 0.1.
OPTICS_DEFAULTS: dict[str, float] = {
    "rlnVoltage": 300.0,
    "rlnSphericalAberration": 2.7,
    "rlnAmplitudeContrast": 0.1,
}
#: Prefix of every column biocnn adds (an unknown label to RELION, kept as is).
PREFIX = "biocnn"
#: ``_rlnPipeLineNodeType`` of a particles STAR file in RELION 3.1 pipelines.
PARTICLES_NODE_TYPE = 3
#: ``_rlnPipeLineNodeTypeLabel`` of a particles STAR file in RELION 4 and 5 pipelines.
PARTICLES_NODE_LABEL = "ParticleGroupMetadata.star"


def relion_name(path: str | os.PathLike, section: int | None, project: str | os.PathLike) -> str:
    """RELION image name of ``path`` (section 0-based, None for a single-image file),
    relative to ``project`` when the file lies inside it, else absolute."""
    full = Path(os.path.abspath(path))
    base = Path(os.path.abspath(project))
    try:
        shown: str | Path = full.relative_to(base)
    except ValueError:
        shown = full
    return os.fspath(shown) if section is None else format_image_name(section, shown)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def rebase_names(
    names: Sequence[str], files: Sequence[str | os.PathLike], project: str | os.PathLike
) -> list[str]:
    """Input ``rlnImageName`` values made resolvable from ``project``: a name whose path
    already opens the same file from ``project`` is kept verbatim, others are rewritten with
    :func:`relion_name`. ``files`` are the files the names were resolved to (one per name)."""
    out: list[str] = []
    cache: dict[tuple[str, str], bool] = {}
    for name, file in zip(names, files, strict=True):
        section, rel = parse_image_name(name)
        key = (rel, os.fspath(file))
        if key not in cache:
            cache[key] = _same(Path(project) / rel, Path(file))  # an absolute rel stays itself
        if cache[key]:
            out.append(name)
        else:
            out.append(relion_name(file, section if "@" in name else None, project))
    return out


def complete_optics(
    particles: pd.DataFrame,
    optics: pd.DataFrame | None,
    apix: np.ndarray,
    image_size: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """A particles table and a complete RELION 3.1+ optics table for it.

    Parameters
    ----------
    particles
        ``(N, C)`` input rows (never modified; a copy is returned, with columns only added).
    optics
        The input's optics table, or None (RELION 3.0 file, plain images).
    apix, image_size
        ``(N,)`` pixel size (Å, as the images were read) and box (px) of every row.

    Returns
    -------
    particles, optics : pd.DataFrame
        Particles with ``rlnOpticsGroup`` (added when missing) and, for 3.0 origins,
        ``rlnOriginX/YAngst``; optics with every column RELION 3.1+ requires.
    defaulted : list[str]
        Optics labels filled from :data:`OPTICS_DEFAULTS` for at least one group.
    """
    parts = particles.copy()
    n = len(parts)
    apix = np.asarray(apix, dtype=np.float64).reshape(n)
    image_size = np.asarray(image_size, dtype=np.int64).reshape(n)
    if optics is not None and len(optics) and "rlnOpticsGroup" in optics.columns:
        table = optics.copy().reset_index(drop=True)
        if "rlnOpticsGroup" not in parts.columns:
            if len(table) != 1:
                raise BiocnnError(f"{len(table)} optics groups but the particles have no "
                                  "rlnOpticsGroup column")
            parts["rlnOpticsGroup"] = int(table["rlnOpticsGroup"].iloc[0])
        groups = parts["rlnOpticsGroup"].astype(int).to_numpy()
        missing = sorted(set(groups.tolist()) - set(table["rlnOpticsGroup"].astype(int).tolist()))
        if missing:
            raise BiocnnError(f"optics group {missing[0]} of the particles is not in data_optics")
    else:
        groups = _assign_groups(parts, apix, image_size)
        if "rlnOpticsGroup" not in parts.columns:
            parts["rlnOpticsGroup"] = groups
        table = pd.DataFrame({"rlnOpticsGroup": sorted(set(groups.tolist()))})
    first = {g: int(np.argmax(groups == g)) for g in table["rlnOpticsGroup"].astype(int).tolist()}
    rows = [first[g] for g in table["rlnOpticsGroup"].astype(int).tolist()]
    defaulted: list[str] = []

    def fill(label: str, values: Sequence[object]) -> None:
        if label not in table.columns:
            table[label] = list(values)

    fill("rlnOpticsGroupName", [f"opticsGroup{g}" for g in table["rlnOpticsGroup"].astype(int)])
    fill("rlnImagePixelSize", [round(float(apix[r]), 6) for r in rows])
    fill("rlnImageSize", [int(image_size[r]) for r in rows])
    fill("rlnImageDimensionality", [2] * len(rows))
    for label, default in OPTICS_DEFAULTS.items():
        if label in table.columns:
            continue
        if label in parts.columns:  # RELION 3.0: per particle; one value per group
            fill(label, [float(parts[label].iloc[r]) for r in rows])
        else:
            fill(label, [default] * len(rows))
            defaulted.append(label)
    _check_groups(parts, groups)
    _add_origins_angst(parts, apix)
    order = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize",
             "rlnImageDimensionality", *OPTICS_DEFAULTS]
    table = table[order + [c for c in table.columns if c not in order]]
    return parts, table, defaulted


def _assign_groups(parts: pd.DataFrame, apix: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``(N,)`` 1-based optics groups: the input's ``rlnOpticsGroup``, else one group per
    distinct (pixel size, box, voltage, Cs, amplitude contrast)."""
    if "rlnOpticsGroup" in parts.columns:
        return parts["rlnOpticsGroup"].astype(int).to_numpy()
    keys = [np.round(apix, 5), size]
    keys += [parts[c].to_numpy(dtype=np.float64) for c in OPTICS_DEFAULTS if c in parts.columns]
    table = np.stack(keys, axis=1) if len(parts) else np.zeros((0, len(keys)))
    _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # groups numbered in order of first appearance
    return (rank[inverse.reshape(-1)] + 1).astype(np.int64)


def _check_groups(parts: pd.DataFrame, groups: np.ndarray) -> None:
    """Warn where a RELION 3.0 per-particle optics value varies inside one optics group
    (only the group's first value can go into the optics table)."""
    for label in OPTICS_DEFAULTS:
        if label not in parts.columns:
            continue
        values = parts[label].to_numpy(dtype=np.float64)
        for g in np.unique(groups).tolist():
            v = values[groups == g]
            if v.size and not np.allclose(v, v[0]):
                warnings.warn(f"{label} varies inside optics group {g} (e.g. {v.min():g} and "
                              f"{v.max():g}); the optics table keeps the first value",
                              stacklevel=3)
                break


def _add_origins_angst(parts: pd.DataFrame, apix: np.ndarray) -> None:
    """RELION 3.0 origins in pixels gain their 3.1 columns in Å (RELION 3.1+ reads only
    those; without them every particle would lose its shift)."""
    for axis in ("X", "Y", "Z"):
        px, angst = f"rlnOrigin{axis}", f"rlnOrigin{axis}Angst"
        if px in parts.columns and angst not in parts.columns:
            parts[angst] = parts[px].to_numpy(dtype=np.float64) * apix


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """The per-class probability columns: ``biocnnProbability_<class>`` (non-word
    characters as ``_``; numbered when two names would collide)."""
    cols = [f"{PREFIX}Probability_" + re.sub(r"\W", "_", n) for n in class_names]
    if len(set(cols)) != len(cols):
        cols = [f"{PREFIX}Probability_{i + 1}" for i in range(len(class_names))]
    return cols


def add_predictions(
    particles: pd.DataFrame, probabilities: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """``particles`` plus the prediction columns (a copy; no existing column is changed).

    Adds ``biocnnClassNumber`` (1-based), ``biocnnClassName``, ``biocnnProbability`` (of the
    predicted class) and ``biocnnProbability_<class>`` per class, from ``(N, K)``
    ``probabilities``. Columns of an earlier biocnn prediction are replaced, with a warning;
    RELION's own labels are never touched.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    new = {
        f"{PREFIX}ClassNumber": pred + 1,
        f"{PREFIX}ClassName": [re.sub(r"\s", "_", class_names[c]) for c in pred],
        f"{PREFIX}Probability": np.round(probs.max(1) if len(probs) else probs[:, :0].sum(1), 6),
        **{c: np.round(probs[:, j], 6) for j, c in enumerate(prediction_columns(class_names))},
    }
    old = [c for c in particles.columns if str(c).startswith(PREFIX)]
    if old:
        warnings.warn(f"replacing the columns of an earlier biocnn prediction ({', '.join(old[:3])}"
                      f"{', ...' if len(old) > 3 else ''})", stacklevel=2)
    out = particles.drop(columns=old).copy()
    for col, values in new.items():
        out[col] = values
    return out


def write_output_nodes(job_dir: str | os.PathLike, stars: Sequence[str | os.PathLike],
                       project: str | os.PathLike = ".") -> Path:
    """Write ``job_dir/RELION_OUTPUT_NODES.star`` listing the particle STAR files ``stars``.

    Node names are relative to ``project`` (RELION's convention). Both node-type columns are
    written: ``rlnPipeLineNodeType`` (3 = particles, RELION 3.1) and
    ``rlnPipeLineNodeTypeLabel`` (``ParticleGroupMetadata.star``, RELION 4 and 5); each
    version keeps the one it does not know as an unknown label.
    """
    names = [relion_name(s, None, project) for s in stars]
    nodes = pd.DataFrame({
        "rlnPipeLineNodeName": names,
        "rlnPipeLineNodeTypeLabel": [PARTICLES_NODE_LABEL] * len(names),
        "rlnPipeLineNodeType": [PARTICLES_NODE_TYPE] * len(names),
    })
    return write_star_blocks(Path(job_dir) / "RELION_OUTPUT_NODES.star", {"output_nodes": nodes})


def mark_exit(job_dir: str | os.PathLike, success: bool) -> Path:
    """Create ``RELION_JOB_EXIT_SUCCESS`` (or ``..._FAILURE``) in ``job_dir``, removing a
    stale marker of the other kind (RELION reads whichever exists)."""
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    ok, bad = job / "RELION_JOB_EXIT_SUCCESS", job / "RELION_JOB_EXIT_FAILURE"
    for stale in (ok, bad):
        stale.unlink(missing_ok=True)
    marker = ok if success else bad
    marker.touch()
    return marker
