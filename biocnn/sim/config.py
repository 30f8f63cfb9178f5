"""Settings of ``biocnn simulate`` (light: no torch/gemmi, so the CLI can show defaults).

``SimConfig`` holds every setting that determines a simulated data set; ``DEMO_SETTINGS``
are the overrides used by ``biocnn simulate --demo``; ``AverageSettings`` the ranges that
``--kind class-averages`` draws from (see :mod:`biocnn.sim.average`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biocnn.errors import BiocnnError, OptionError

__all__ = [
    "SimConfig", "AverageSettings", "DEMO_SETTINGS", "JUNK_CLASS", "GOOD_CLASS", "KINDS",
    "validate_config", "class_names", "structure_labels", "load_sim_toml", "apply_sim_values",
]

JUNK_CLASS = "junk"
GOOD_CLASS = "good"
KINDS = ("particles", "class-averages")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class AverageSettings:
    """Ranges drawn per class average (``--kind class-averages``); see :mod:`biocnn.sim.average`.

    Pixel sizes in Å, defoci in µm, B-factors in Å^2, angles in degrees. ``fill`` is the
    particle diameter over the mask diameter, ``mask`` the mask diameter over the box;
    ``shift_error`` is the members' residual misalignment (std) as a fraction of the
    particle diameter; ``mask_edge`` the soft-mask width in original pixels (RELION 5 px);
    ``crowding_share`` the good classes that show the faint halo of unaligned neighbours;
    ``min_class_snr`` the least ``K * snr`` of a good class (below it the particle is not
    recognisable, so an annotator would not call the class good; junk has no floor).
    """

    particles_min: int = 20
    particles_max: int = 1000
    particle_snr_min: float = 0.003
    particle_snr_max: float = 0.1
    apix_min: float = 0.8
    apix_max: float = 5.0
    box_min: int = 64
    box_max: int = 400
    fill_min: float = 0.3
    fill_max: float = 0.9
    mask_min: float = 0.6
    mask_max: float = 0.95
    mask_edge: float = 5.0
    defocus_min: float = 0.5
    defocus_max: float = 3.5
    bfactor_min: float = 30.0
    bfactor_max: float = 250.0
    shift_error_max: float = 0.03
    rotation_error_max: float = 4.0
    view_spread_max: float = 6.0
    centre_offset_max: float = 0.03
    wiener_share: float = 0.5
    tau2_fudge: float = 2.0
    procedural_share: float = 0.75
    mass_min: float = 5e4
    mass_max: float = 4e6
    sub_orientations: int = 4
    crowding_share: float = 0.25
    min_class_snr: float = 0.3


@dataclass
class SimConfig:
    """Everything that determines a simulated data set (saved in ``run.json``).

    Lengths are in pixels unless named otherwise; defocus in µm; voltage kV; Cs mm;
    B-factor Å^2 (CTF envelope).
    """

    structures: list[str] = field(default_factory=list)
    names: list[str] | None = None
    n_per_class: int = 1000
    box: int = 128
    apix: float = 2.0
    max_shift: float = 8.0
    snr: float = 0.1
    defocus_min: float = 1.0
    defocus_max: float = 2.5
    astigmatism: float = 0.05
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 50.0
    invert: bool = False
    phase_flip: bool = False
    junk: bool = False
    tilt_max: float = 180.0
    keep_waters: bool = False
    seed: int = 0
    device: str = "auto"
    kind: str = "particles"
    workers: int = 1
    map_apix: list[float] | None = None
    averages: AverageSettings = field(default_factory=AverageSettings)


#: ``biocnn simulate --demo``: the four shipped structures (8-165 kDa, up to 210 Å across)
#: in a 64 px box at 4 Å/px: small enough to train on a CPU, noisy enough to be realistic
#: (a 4-layer CNN reaches ~97 % validation accuracy after 12 epochs).
DEMO_SETTINGS: dict[str, Any] = {
    "n_per_class": 500, "box": 64, "apix": 4.0, "max_shift": 6.0, "snr": 0.3,
}



def validate_config(cfg: SimConfig) -> None:
    """Raise :class:`OptionError` (one line, naming the field) for impossible settings;
    ``averages.*`` ranges (config-file only) raise :class:`BiocnnError`."""
    averages = cfg.kind == "class-averages"
    a = cfg.averages
    n_names, n_apix = len(cfg.names or []), len(cfg.map_apix or [])
    checks = [  # (ok, field, value, why)
        (cfg.kind in KINDS, "kind", repr(cfg.kind), f"must be one of {', '.join(KINDS)}"),
        (averages or len(cfg.structures) > 0, "structures", None, "give at least one structure file"),
        (averages or cfg.names is None or n_names == len(cfg.structures), "names",
         ",".join(cfg.names or []), f"{n_names} names for {len(cfg.structures)} structures"),
        (cfg.map_apix is None or n_apix in (1, len(cfg.structures)), "map_apix",
         ",".join(map(str, cfg.map_apix or [])),
         f"{n_apix} pixel sizes for {len(cfg.structures)} structures (give one or one each)"),
        (cfg.map_apix is None or all(v >= 0 and math.isfinite(v) for v in cfg.map_apix),
         "map_apix", cfg.map_apix, "must be >= 0 Å (0 = read the map header)"),
        (cfg.n_per_class >= 1, "n_per_class", cfg.n_per_class, "must be >= 1"),
        (cfg.box >= 8, "box", cfg.box, "must be at least 8 px"),
        (cfg.apix > 0 and math.isfinite(cfg.apix), "apix", cfg.apix, "must be > 0 Å"),
        (cfg.snr > 0 and math.isfinite(cfg.snr), "snr", cfg.snr, "must be > 0"),
        (0 <= cfg.max_shift <= cfg.box / 2, "max_shift", cfg.max_shift, "must be in [0, box/2] px"),
        (cfg.defocus_min >= 0, "defocus_min", cfg.defocus_min, "must be >= 0 µm"),
        (cfg.defocus_min <= cfg.defocus_max, "defocus_max", cfg.defocus_max,
         f"must be >= the minimum defocus {cfg.defocus_min}"),
        (cfg.astigmatism >= 0, "astigmatism", cfg.astigmatism, "must be >= 0 µm"),
        (cfg.voltage > 0, "voltage", cfg.voltage, "must be > 0 kV"),
        (cfg.cs >= 0, "cs", cfg.cs, "must be >= 0 mm"),
        (0 <= cfg.amplitude_contrast < 1, "amplitude_contrast", cfg.amplitude_contrast,
         "must be in [0, 1)"),
        (cfg.bfactor >= 0, "bfactor", cfg.bfactor, "must be >= 0 Å^2"),
        (0 < cfg.tilt_max <= 180, "tilt_max", cfg.tilt_max, "must be in (0, 180] degrees"),
        (cfg.workers >= 1, "workers", cfg.workers, "must be >= 1"),
        (not averages or cfg.box >= 32, "box", cfg.box, "must be at least 32 px for class averages"),
        (0 <= a.procedural_share <= 1, "procedural_share", a.procedural_share, "must be in [0, 1]"),
    ]
    for ok, name, value, why in checks:
        if not ok:
            raise OptionError(name, value, why)
    ranges = [
        (1 <= a.particles_min <= a.particles_max, "particles_min/max must satisfy 1 <= min <= max"),
        (0 < a.particle_snr_min <= a.particle_snr_max,
         "particle_snr_min/max must satisfy 0 < min <= max"),
        (0 < a.fill_min <= a.fill_max, "fill_min/max must satisfy 0 < min <= max"),
        (0 < a.mask_min <= a.mask_max <= 1, "mask_min/max must satisfy 0 < min <= max <= 1"),
        (0 < a.apix_min <= a.apix_max and 2 <= a.box_min <= a.box_max,
         "need 0 < apix_min <= apix_max and 2 <= box_min <= box_max"),
        (1e3 <= a.mass_min <= a.mass_max <= 1e8,
         "mass_min/max must satisfy 1 kDa <= min <= max <= 100 MDa"),
    ]
    for ok, why in ranges:
        if not ok:
            raise BiocnnError(f"averages.{why}")


def class_names(cfg: SimConfig) -> list[str]:
    """Distinct class names in first-seen order, plus ``junk`` last when requested.

    Names come from ``--names`` or the file stems; repeated names (``--names good,good``)
    merge their structures into one class. Class averages always give ``good`` + ``junk``.
    """
    if cfg.kind == "class-averages":
        return [GOOD_CLASS, JUNK_CLASS]
    labels = _structure_names(cfg)
    names = list(dict.fromkeys(labels))
    if cfg.junk:
        if JUNK_CLASS in names:
            raise OptionError("junk", True, f"class name {JUNK_CLASS!r} is taken by a structure",
                              fix="names")
        names.append(JUNK_CLASS)
    for name in names:
        if not _NAME_RE.match(name):
            raise OptionError("structures", None, f"class name {name!r} is not usable as a folder "
                              "name", fix="names")
    return names


def _structure_names(cfg: SimConfig) -> list[str]:
    stems = [Path(p).name.split(".")[0] for p in cfg.structures]
    names = list(cfg.names) if cfg.names else stems
    if len(names) != len(cfg.structures):
        raise OptionError("names", ",".join(names), f"{len(names)} names for {len(cfg.structures)} "
                          "structures")
    dupes = sorted({n for n in stems if stems.count(n) > 1})
    if not cfg.names and dupes:  # same stem by accident: merging must be asked for with --names
        raise OptionError("structures", None, f"duplicate file stems {', '.join(dupes)}: merging "
                          "them into one class must be asked for", fix="names")
    return names


def structure_labels(cfg: SimConfig) -> list[int]:
    """0-based class index of each structure in :func:`class_names` order."""
    labels = _structure_names(cfg)
    order = list(dict.fromkeys(labels))
    return [order.index(n) for n in labels]


def load_sim_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Settings of ``biocnn simulate --config FILE``: top-level keys or a ``[simulate]`` table.

    Keys are :class:`SimConfig` fields; an ``[averages]`` (or ``[simulate.averages]``)
    table holds :class:`AverageSettings` fields. Relative ``structures`` paths are taken
    relative to the file's folder.
    """
    from biocnn.config import load_toml

    values = load_toml(path)
    values = dict(values.get("simulate", values))
    if "structures" in values:
        base = Path(path).parent
        values["structures"] = [str(p if Path(p).is_absolute() else base / p)
                                for p in values["structures"]]
    return values


def apply_sim_values(cfg: SimConfig, values: dict[str, Any]) -> SimConfig:
    """``cfg`` with ``values`` (as from :func:`load_sim_toml`) applied; unknown keys raise."""
    from dataclasses import replace

    from biocnn.config import merge

    values = dict(values)
    averages = values.pop("averages", None)
    if averages is not None:
        if not isinstance(averages, dict):
            raise BiocnnError("config key 'averages' must be a table of class-average settings")
        cfg = replace(cfg, averages=merge(cfg.averages, averages))
    if isinstance(values.get("map_apix"), (int, float)):
        values["map_apix"] = [float(values["map_apix"])]
    return merge(cfg, values)
