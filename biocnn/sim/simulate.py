"""Build a labelled cryo-EM particle data set on disk from atomic models and maps.

Layout written (atomically: built under a temporary name, moved into place at the end)::

    out/<class>/<class>.mrcs   one float32 stack per class, pixel size in the header
    out/particles.star         RELION 3.1 STAR: optics + one row per image, all parameters
    out/run.json               version, command line, resolved configuration, summary

Image model per particle: uniform random orientation (RELION ZYZ angles), Fourier-slice
projection, in-plane shift (Fourier phase ramp, sub-pixel), CTF, then white Gaussian noise
with ``var(signal) / var(noise) = snr`` in each image; images are scaled so the noise has
unit variance. Origins follow RELION: the particle centre sits at the box centre minus
``rlnOriginX/YAngst`` (translating the image by the origin re-centres it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from biocnn.atomic import atomic_dir, atomic_path, write_json
from biocnn.errors import OptionError
from biocnn.io.star import optics_block, write_star
from biocnn.io.writers import write_mrc
from biocnn.runtime import resolve_device, seed_everything
from biocnn.sim.config import SimConfig, class_names, structure_labels, validate_config
from biocnn.sim.ctf import ctf_2d
from biocnn.sim.imaging import add_noise, noise_sigma, phase_flip, shift_spectra
from biocnn.sim.junk import junk_signals
from biocnn.sim.project import (
    FourierProjector,
    euler_to_matrix,
    images_to_spectra,
    random_orientations,
    spectra_to_images,
)
from biocnn.sim.structure import load_volume

__all__ = [
    "SimSummary",
    "ImageParams",
    "demo_structures",
    "draw_params",
    "simulate_dataset",
    "write_gallery",
    "map_apix_of",
    "check_run",
]

STAR_NAME = "particles.star"
_BATCH = 256
_GALLERY_COLUMNS = 8


@dataclass
class SimSummary:
    """What :func:`simulate_dataset` produced."""

    out: Path
    class_names: list[str]
    counts: dict[str, int]
    diameters: dict[str, float]
    seconds: float
    star: Path = field(init=False)

    def __post_init__(self) -> None:
        self.star = self.out / STAR_NAME


@dataclass(frozen=True)
class ImageParams:
    """Per-image random parameters.

    Attributes
    ----------
    angles
        ``(N, 3)`` RELION ``(rot, tilt, psi)`` in degrees.
    shifts
        ``(N, 2)`` particle displacement ``(dx, dy)`` in pixels.
    defocus_u, defocus_v, defocus_angle
        ``(N,)`` Å, Å, degrees.
    """

    angles: torch.Tensor
    shifts: torch.Tensor
    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor

    def __len__(self) -> int:
        return self.angles.shape[0]

    def __getitem__(self, index: slice) -> ImageParams:
        return ImageParams(*(getattr(self, f.name)[index] for f in fields(self)))


def demo_structures() -> list[Path]:
    """The four atomic models shipped in ``biocnn/sim/data`` (1R19, 1UBI, 3MHT, 3O21)."""
    data = resources.files("biocnn") / "sim" / "data"
    return sorted(Path(str(p)) for p in data.iterdir() if p.name.endswith(".pdb"))


def draw_params(
    n: int, cfg: SimConfig, generator: torch.Generator, *, particle: bool = True
) -> ImageParams:
    """Draw orientations, shifts (uniform in a disc of ``max_shift``) and defoci.

    With ``particle=False`` (junk) orientations and shifts are zero; defoci are drawn.
    """
    if particle:
        angles = random_orientations(n, generator, cfg.tilt_max)
        radius = cfg.max_shift * torch.sqrt(torch.rand(n, generator=generator))
        phi = 2 * math.pi * torch.rand(n, generator=generator)
        shifts = torch.stack([radius * torch.cos(phi), radius * torch.sin(phi)], dim=1)
    else:
        angles, shifts = torch.zeros(n, 3), torch.zeros(n, 2)
    mean = 1e4 * (cfg.defocus_min + (cfg.defocus_max - cfg.defocus_min)
                  * torch.rand(n, generator=generator, dtype=torch.float64))
    astig = 1e4 * cfg.astigmatism * torch.rand(n, generator=generator, dtype=torch.float64)
    angle = 180.0 * torch.rand(n, generator=generator, dtype=torch.float64)
    return ImageParams(angles, shifts, mean + astig / 2, mean - astig / 2, angle)


def _form(
    spectra: torch.Tensor, params: ImageParams, cfg: SimConfig, generator: torch.Generator
) -> torch.Tensor:
    """Shift, CTF, crop, noise (and optional phase flip / inversion).

    Parameters
    ----------
    spectra
        ``(B, m, m // 2 + 1)`` projection spectra, ``m >= cfg.box``.

    Returns
    -------
    torch.Tensor
        ``(B, box, box)`` float32 on the CPU.
    """
    m, dev = spectra.shape[-2], spectra.device

    def ctf(size: int) -> torch.Tensor:
        return ctf_2d(
            size, cfg.apix, params.defocus_u.to(dev), params.defocus_v.to(dev),
            params.defocus_angle.to(dev), voltage=cfg.voltage, cs=cfg.cs,
            amplitude_contrast=cfg.amplitude_contrast, bfactor=cfg.bfactor,
        )

    ctf_m = ctf(m)
    signal = spectra_to_images(shift_spectra(spectra, params.shifts) * ctf_m, m, cfg.box)
    images = add_noise(signal, noise_sigma(signal, cfg.snr), generator)
    if cfg.phase_flip:
        images = phase_flip(images, ctf_m if m == cfg.box else ctf(cfg.box))
    if cfg.invert:
        images = -images
    return images.float().cpu()


def _star_table(name: str, label: int, params: ImageParams, apix: float, bfactor: float
                ) -> pd.DataFrame:
    n = len(params)
    angles = params.angles.double().numpy()
    origin = -params.shifts.double().numpy() * apix
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{name}/{name}.mrcs" for i in range(n)],
        "rlnOpticsGroup": np.ones(n, dtype=int),
        "rlnAngleRot": angles[:, 0],
        "rlnAngleTilt": angles[:, 1],
        "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": origin[:, 0],
        "rlnOriginYAngst": origin[:, 1],
        "rlnDefocusU": params.defocus_u.numpy(),
        "rlnDefocusV": params.defocus_v.numpy(),
        "rlnDefocusAngle": params.defocus_angle.numpy(),
        "rlnCtfBfactor": np.full(n, bfactor),
        "rlnClassNumber": np.full(n, label, dtype=int),
        "rlnClassName": [name] * n,
    })


def simulate_dataset(
    cfg: SimConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    preview: str | os.PathLike | None = None,
) -> SimSummary:
    """Simulate ``n_per_class`` images per structure (plus junk) and write them to ``out``.

    Parameters
    ----------
    cfg
        The simulation settings; validated first.
    out
        Output directory (must be empty or absent unless ``overwrite``).
    overwrite
        Replace an existing non-empty ``out``.
    progress
        Show a rich progress bar.
    preview
        Optional image file (``.png``, ``.pdf``, ...) for a gallery of examples per class.

    Returns
    -------
    SimSummary
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from biocnn.config import run_metadata

    start = time.perf_counter()
    out = check_run(cfg, out, overwrite, preview)
    names = class_names(cfg)
    if cfg.kind == "class-averages":
        from biocnn.sim.average_dataset import simulate_class_averages

        return simulate_class_averages(cfg, out, overwrite=overwrite, progress=progress,
                                       preview=preview)
    device = resolve_device(cfg.device)
    generator = seed_everything(cfg.seed)
    volumes = [load_volume(p, cfg.apix, cfg.box, keep_waters=cfg.keep_waters,
                           map_apix=map_apix_of(cfg, i))
               for i, p in enumerate(cfg.structures)]
    labels = structure_labels(cfg)

    n = cfg.n_per_class
    tables, examples, pool = [], {}, []
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    bar = Progress(*columns, disable=not progress)
    with atomic_dir(out, overwrite=overwrite, marker="run.json") as tmp, bar:
        task = bar.add_task("simulating", total=n * len(names))

        def emit(label: int, params: ImageParams,
                 parts: list[tuple[int, Callable[[ImageParams], torch.Tensor]]]) -> None:
            """Render class ``label`` (1-based) batch by batch; write its stack and rows.

            ``parts`` are ``(count, spectra_of)`` per structure of the class, in order.
            """
            name = names[label - 1]
            bar.update(task, description=name)
            stack = torch.empty(n, cfg.box, cfg.box)
            start = 0
            for count, spectra_of in parts:
                for i in range(start, start + count, _BATCH):
                    batch = params[i : min(i + _BATCH, start + count)]
                    stack[i : i + len(batch)] = _form(spectra_of(batch), batch, cfg, generator)
                    bar.advance(task, len(batch))
                start += count
            write_mrc(tmp / name / f"{name}.mrcs", stack.numpy(), apix=cfg.apix, is_stack=True)
            tables.append(_star_table(name, label, params, cfg.apix, cfg.bfactor))
            examples[name] = stack[:_GALLERY_COLUMNS].numpy()

        n_good = len(names) - int(cfg.junk)
        for label in range(1, n_good + 1):
            members = [i for i, lab in enumerate(labels) if lab == label - 1]
            counts = [n // len(members) + (j < n % len(members)) for j in range(len(members))]
            parts = []
            for i, count in zip(members, counts, strict=True):
                projector = FourierProjector(torch.from_numpy(volumes[i].data).to(device))
                parts.append((count, lambda b, p=projector: p.slices(
                    euler_to_matrix(b.angles).to(device))))
                if cfg.junk:  # clean projections to build overlapping-particle junk from
                    rot = euler_to_matrix(random_orientations(min(n, 32), generator)).to(device)
                    pool.append(spectra_to_images(projector.slices(rot), projector.size,
                                                  cfg.box).cpu())
            emit(label, draw_params(n, cfg, generator), parts)
            del parts
        if cfg.junk:
            particles = torch.cat(pool)
            emit(len(names), draw_params(n, cfg, generator, particle=False),
                 [(n, lambda b: images_to_spectra(
                     junk_signals(len(b), cfg.box, particles, generator)[0].to(device)))])
        optics = optics_block(cfg.apix, cfg.box).assign(
            rlnAmplitudeContrast=cfg.amplitude_contrast, rlnSphericalAberration=cfg.cs,
            rlnVoltage=cfg.voltage, rlnCtfDataAreCtfPremultiplied=0)
        write_star(tmp / STAR_NAME, pd.concat(tables, ignore_index=True), optics)
        summary = SimSummary(
            out=out, class_names=names, counts=dict.fromkeys(names, n),
            diameters={names[lab]: round(max(v.diameter for v, la in zip(volumes, labels, strict=True)
                                             if la == lab), 1) for lab in sorted(set(labels))},
            seconds=round(time.perf_counter() - start, 2),
        )
        meta = run_metadata(cfg)
        meta["summary"] = {k: v for k, v in vars(summary).items() if k not in ("out", "star")}
        write_json(tmp / "run.json", meta)
    if preview is not None:
        write_gallery(preview, examples)
    return summary


def map_apix_of(cfg: SimConfig, index: int) -> float | None:
    """The ``--map-apix`` override of structure ``index`` (None: read the map header)."""
    if not cfg.map_apix:
        return None
    value = cfg.map_apix[0] if len(cfg.map_apix) == 1 else cfg.map_apix[index]
    return value or None


def check_run(cfg: SimConfig, out: str | os.PathLike, overwrite: bool,
              preview: str | os.PathLike | None) -> Path:
    """Refuse impossible settings, an output that is a file or (without ``overwrite``) a
    non-empty folder, and a preview format matplotlib cannot write; returns ``Path(out)``."""
    validate_config(cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError("out", out, "is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OptionError("out", out, "is not empty", fix="overwrite")
    if preview is not None:
        _check_figure_format(Path(preview))
    return out


def _check_figure_format(path: Path) -> None:
    from matplotlib.figure import Figure

    fmt = path.suffix.lower().lstrip(".")
    if fmt not in Figure().canvas.get_supported_filetypes():
        raise OptionError("preview", path, f"unsupported image format {path.suffix!r} (use .png)")


def write_gallery(path: str | os.PathLike, examples: dict[str, np.ndarray]) -> Path:
    """Atomically save a gallery: one row per class, up to 8 images each.

    Parameters
    ----------
    path
        Output image; the format follows the suffix.
    examples
        Class name -> ``(k, H, W)`` images.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    _check_figure_format(path)
    rows, cols = len(examples), max(len(v) for v in examples.values())
    fig = Figure(figsize=(1.2 * cols + 1.0, 1.2 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r, (name, images) in enumerate(examples.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray", interpolation="nearest")
            else:
                ax.set_axis_off()
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=100)
    return path
