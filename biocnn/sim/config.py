"""Settings of ``biocnn simulate`` (light: no torch/gemmi, so the CLI can show defaults).

``SimConfig`` holds every setting that determines a simulated data set; ``DEMO_SETTINGS``
are the overrides used by ``biocnn simulate --demo``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biocnn.errors import BiocnnError

__all__ = ["SimConfig", "DEMO_SETTINGS", "JUNK_CLASS", "validate_config", "class_names"]

JUNK_CLASS = "junk"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


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


#: ``biocnn simulate --demo``: the four shipped structures (8-165 kDa, up to 210 Å across)
#: in a 64 px box at 4 Å/px: small enough to train on a CPU, noisy enough to be realistic
#: (a 4-layer CNN reaches ~97 % validation accuracy after 12 epochs).
DEMO_SETTINGS: dict[str, Any] = {
    "n_per_class": 500, "box": 64, "apix": 4.0, "max_shift": 6.0, "snr": 0.3,
}



def validate_config(cfg: SimConfig) -> None:
    """Raise :class:`BiocnnError` (one line, naming the option) for impossible settings."""
    checks = [
        (len(cfg.structures) > 0, "--structures: give at least one structure file"),
        (cfg.n_per_class >= 1, f"--n-per-class must be >= 1, got {cfg.n_per_class}"),
        (cfg.box >= 8, f"--box must be at least 8 px, got {cfg.box}"),
        (cfg.apix > 0 and math.isfinite(cfg.apix), f"--apix must be > 0 Å, got {cfg.apix}"),
        (cfg.snr > 0 and math.isfinite(cfg.snr), f"--snr must be > 0, got {cfg.snr}"),
        (0 <= cfg.max_shift <= cfg.box / 2,
         f"--max-shift must be in [0, box/2] px, got {cfg.max_shift}"),
        (0 <= cfg.defocus_min <= cfg.defocus_max,
         f"--defocus-min/--defocus-max must satisfy 0 <= min <= max, got "
         f"{cfg.defocus_min} and {cfg.defocus_max}"),
        (cfg.astigmatism >= 0, f"--astigmatism must be >= 0 µm, got {cfg.astigmatism}"),
        (cfg.voltage > 0, f"--voltage must be > 0 kV, got {cfg.voltage}"),
        (cfg.cs >= 0, f"--cs must be >= 0 mm, got {cfg.cs}"),
        (0 <= cfg.amplitude_contrast < 1,
         f"--amplitude-contrast must be in [0, 1), got {cfg.amplitude_contrast}"),
        (cfg.bfactor >= 0, f"--bfactor must be >= 0 Å^2, got {cfg.bfactor}"),
        (0 < cfg.tilt_max <= 180, f"--tilt-max must be in (0, 180] degrees, got {cfg.tilt_max}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BiocnnError(message)


def class_names(cfg: SimConfig) -> list[str]:
    """Class names (``--names`` or the file stems), plus ``junk`` last when requested."""
    stems = [Path(p).name.split(".")[0] for p in cfg.structures]
    names = list(cfg.names) if cfg.names else stems
    if len(names) != len(cfg.structures):
        raise BiocnnError(f"--names: got {len(names)} names for {len(cfg.structures)} structures")
    if cfg.junk:
        names.append(JUNK_CLASS)
    for name in names:
        if not _NAME_RE.match(name):
            raise BiocnnError(f"class name {name!r} is not usable as a folder name (use --names)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BiocnnError(f"duplicate class names {', '.join(dupes)} (use --names)")
    return names
