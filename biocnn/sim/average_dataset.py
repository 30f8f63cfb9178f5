"""``biocnn simulate --kind class-averages``: a labelled good/junk set of 2D class averages.

Layout (as the particle simulation, so ``biocnn train OUT`` reads it)::

    out/good/good.mrcs   class averages of well-aligned particles
    out/junk/junk.mrcs   junk class averages (kinds and shares: :mod:`biocnn.sim.average_junk`)
    out/particles.star   RELION 3.1 STAR, one row per image with every drawn parameter
    out/run.json         version, command line, configuration, summary

Good class averages come from procedural pseudo-atomic models (a new one per image, share
``procedural_share``; kinds in :mod:`biocnn.sim.procedural`) and from the structure files
(the four shipped models when none are given; maps become pseudo-atoms of their voxels).
Each image: uniform random view and in-plane rotation, a few jittered copies of it
averaged (view spread and in-plane alignment error), then :func:`class_average` and
:func:`finish_average`. The images are ``box`` px but their pixel size varies (the
particle fills 30-90 % of the mask); the per-image pixel size is the STAR column
``rlnImagePixelSize`` and the MRC header carries the median.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from biocnn.atomic import atomic_dir, write_json
from biocnn.io.star import optics_block, write_star
from biocnn.io.writers import write_mrc
from biocnn.sim.average import (
    AverageParams,
    class_average,
    draw_average_params,
    finish_average,
)
from biocnn.sim.average_junk import jitter_views, junk_kinds, junk_spectrum
from biocnn.sim.config import GOOD_CLASS, JUNK_CLASS, AverageSettings, SimConfig
from biocnn.sim.procedural import PseudoAtoms, atoms_from_structure, project_atoms, random_model
from biocnn.sim.project import euler_to_matrix, random_orientations

__all__ = [
    "ModelSampler",
    "load_atoms",
    "render_good",
    "render_junk",
    "render_chunk",
    "simulate_class_averages",
]

_MAP_VOXELS = 64  # maps become pseudo-atoms on a grid of at most this many voxels across


def load_atoms(path: str | os.PathLike, *, keep_waters: bool = False,
               map_apix: float | None = None) -> PseudoAtoms:
    """A structure file as pseudo-atoms: atoms of a model, or the voxels of a map.

    Map voxels (background-subtracted, masked, resampled to at most 64 across) above 2 %
    of the maximum become beads weighted by their density.
    """
    from biocnn.sim.structure import map_volume, read_atomic_model, read_map, structure_kind

    path = Path(path)
    if structure_kind(path) == "atomic":
        return atoms_from_structure(read_atomic_model(path, keep_waters=keep_waters), path.name)
    data, in_apix = read_map(path, map_apix)
    apix = max(in_apix, max(data.shape) * in_apix / _MAP_VOXELS)
    vol = map_volume(path, apix, math.ceil(max(data.shape) * in_apix / apix),
                     map_apix=in_apix).data
    keep = vol > 0.02 * vol.max()
    idx = np.argwhere(keep)[:, ::-1].astype(np.float64)  # (x, y, z)
    xyz = (idx - vol.shape[0] // 2) * apix
    w = vol[keep].astype(np.float64)
    com = (xyz * w[:, None]).sum(0) / w.sum()
    return PseudoAtoms(torch.from_numpy((xyz - com).astype(np.float32)),
                       torch.from_numpy(w.astype(np.float32)), float(w.sum()), 0.5 * apix,
                       path.name)


class ModelSampler:
    """Draws the particle model of the next class average.

    Parameters
    ----------
    pool
        Models read from structure files.
    settings
        ``procedural_share`` and the mass range of procedural models.
    rng
        Parameter generator.
    """

    def __init__(self, pool: list[PseudoAtoms], settings: AverageSettings,
                 rng: np.random.Generator) -> None:
        self.pool, self.s, self.rng = pool, settings, rng

    def __call__(self) -> PseudoAtoms:
        if not self.pool or self.rng.random() < self.s.procedural_share:
            return random_model(self.rng, (self.s.mass_min, self.s.mass_max))
        return self.pool[int(self.rng.integers(len(self.pool)))]


def _meta(p: AverageParams, particle_px: float, atoms: PseudoAtoms, kind: str,
          angles: torch.Tensor) -> dict[str, object]:
    return {"params": p, "particle_px": particle_px, "structure": atoms.kind,
            "diameter": atoms.diameter,
            "mass": atoms.mass, "junk": kind,
            # numpy, not a tensor: worker results pass tensors as file descriptors, one each
            "angles": angles.detach().cpu().numpy().astype(np.float64)}


def render_good(atoms: PseudoAtoms, s: AverageSettings, box: int, rng: np.random.Generator,
                g: torch.Generator) -> tuple[torch.Tensor, dict[str, object]]:
    """One good class average of ``atoms``: ``(box, box)`` float32 and its parameters."""
    p, particle_px = draw_average_params(rng, s, box, atoms.diameter)
    p = replace(p, snr=max(p.snr, s.min_class_snr / p.n_particles))
    angles = random_orientations(1, g)
    rot = jitter_views(euler_to_matrix(angles)[0], s.sub_orientations,
                       rng.uniform(0, s.view_spread_max), rng.uniform(0, s.rotation_error_max), rng)
    offset = torch.from_numpy(rng.normal(0, s.centre_offset_max * box / 2, 2)).float()
    crowded = rng.random() < s.crowding_share
    size = 2 * box if crowded else box  # neighbours lie past the box edge
    spec = project_atoms(atoms, rot, p.apix, size, offset.expand(len(rot), 2)).mean(0)
    if crowded:  # touching neighbours, unaligned across members: a faint blurred halo
        n = int(rng.integers(3, 9))
        dist = rng.uniform(0.8, 1.3, n) * particle_px
        angle = rng.uniform(0, 2 * math.pi, n)
        shifts = torch.from_numpy(np.stack([dist * np.cos(angle), dist * np.sin(angle)], 1))
        halo = project_atoms(atoms, euler_to_matrix(random_orientations(n, g)), p.apix, size,
                             shifts.float(), extra_sigma=rng.uniform(0.1, 0.2) * particle_px * p.apix)
        spec = spec + rng.uniform(0.05, 0.25) * halo.sum(0)
    image = finish_average(class_average(spec, p, box, g, rng), p)
    return image, _meta(p, particle_px, atoms, "crowded" if crowded else "", angles[0])


def render_junk(kind: str, sample: ModelSampler, s: AverageSettings, box: int,
                rng: np.random.Generator, g: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, object]]:
    """One junk class average of ``kind``: ``(box, box)`` float32 and its parameters."""
    atoms = sample()
    p, particle_px = draw_average_params(rng, s, box, atoms.diameter)
    spec = junk_spectrum(kind, 2 * box, p.apix, particle_px, p.mask_diameter / 2, sample,
                         atoms, rng, g)
    image = finish_average(class_average(spec, p, box, g, rng), p)
    return image, _meta(p, particle_px, atoms, kind, torch.zeros(3))


def _star_rows(name: str, label: int, metas: list[dict[str, object]]) -> pd.DataFrame:
    ps = [m["params"] for m in metas]
    angles = np.stack([np.asarray(m["angles"], dtype=np.float64) for m in metas])
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{name}/{name}.mrcs" for i in range(len(metas))],
        "rlnOpticsGroup": 1,
        "rlnClassNumber": label,
        "rlnClassName": name,
        "rlnImagePixelSize": [p.apix for p in ps],
        "rlnMicrographOriginalPixelSize": [p.apix_orig for p in ps],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnDefocusU": [(p.defocus_lo + p.defocus_hi) / 2 for p in ps],
        "rlnCtfBfactor": [p.bfactor for p in ps],
        "rlnVoltage": [p.voltage for p in ps],
        "rlnAmplitudeContrast": [p.amplitude_contrast for p in ps],
        "biocnnParticles": [p.n_particles for p in ps],
        "biocnnOriginalBox": [p.box_orig for p in ps],
        "biocnnParticleSnr": [p.snr for p in ps],
        "biocnnCtfCorrection": [p.correction for p in ps],
        "biocnnDefocusRangeAngst": [p.defocus_hi - p.defocus_lo for p in ps],
        "biocnnShiftErrorPx": [p.shift_error for p in ps],
        "biocnnMaskDiameterPx": [p.mask_diameter for p in ps],
        "biocnnParticleDiameterPx": [m["particle_px"] for m in metas],
        "biocnnStructure": [m["structure"] for m in metas],
        "biocnnMassKDa": [float(m["mass"]) / 1e3 for m in metas],
        "biocnnKind": [m["junk"] or "particle" for m in metas],  # good: particle or crowded
    })


_CHUNK = 64  # images per seeded chunk: results do not depend on the number of workers


@dataclass
class _State:
    """What a worker needs to render chunks (sent once per worker)."""

    pool: list[PseudoAtoms]
    settings: AverageSettings
    box: int
    seed: int
    kinds: list[str]


_WORKER: _State | None = None


def _init_worker(state: _State) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = state


def render_chunk(state: _State, label: int, chunk: int, indices: list[int]
                 ) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Images ``indices`` of class ``label`` (1 good, 2 junk), seeded by (seed, label, chunk).

    Returns
    -------
    images, metas
        ``(len(indices), box, box)`` float32 and one parameter dict per image.
    """
    rng = np.random.default_rng([state.seed, label, chunk])
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    sample = ModelSampler(state.pool, state.settings, rng)
    out = np.empty((len(indices), state.box, state.box), dtype=np.float32)
    metas = []
    for j, i in enumerate(indices):
        if label == 1:
            image, meta = render_good(sample(), state.settings, state.box, rng, g)
        else:
            image, meta = render_junk(state.kinds[i], sample, state.settings, state.box, rng, g)
        out[j] = image.numpy()
        metas.append(meta)
    return out, metas


def _worker_chunk(job: tuple[int, int, list[int]]
                  ) -> tuple[tuple[int, int], tuple[np.ndarray, list[dict[str, object]]]]:
    assert _WORKER is not None
    label, chunk, indices = job
    return (label, chunk), render_chunk(_WORKER, label, chunk, indices)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Per-image FFTs and scatters are small: intra-op threads cost more than they give
    (10x slower on a loaded 2-core machine), so render on one thread and restore after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _executor(state: _State, workers: int) -> Iterator[Callable[[list], Iterator]]:
    """Map chunks in this process (``workers <= 1``) or in spawned worker processes."""
    if workers <= 1:
        _init_worker(state)
        yield lambda jobs: map(_worker_chunk, jobs)
        return
    import multiprocessing as mp

    # spawn, not fork: a forked child of a process that ran OpenMP regions can hang
    with mp.get_context("spawn").Pool(workers, _init_worker, (state,)) as pool:
        yield lambda jobs: pool.imap_unordered(_worker_chunk, jobs)


def simulate_class_averages(
    cfg: SimConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    preview: str | os.PathLike | None = None,
) -> object:
    """Simulate ``n_per_class`` good and ``n_per_class`` junk class averages into ``out``.

    Uses ``cfg.box``, ``cfg.n_per_class``, ``cfg.seed``, ``cfg.structures`` (the shipped
    models when empty and ``procedural_share < 1``), ``cfg.map_apix``, ``cfg.keep_waters``,
    ``cfg.workers`` (processes; the images do not depend on it) and ``cfg.averages``; the
    particle-image settings (apix, snr, defocus, ...) are drawn per image from
    ``cfg.averages`` instead. Images come in chunks of 64 seeded by
    ``(seed, class, chunk)``; rendering runs on one thread per process.

    Returns
    -------
    biocnn.sim.simulate.SimSummary
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from biocnn.config import run_metadata
    from biocnn.runtime import seed_everything
    from biocnn.sim.simulate import (
        SimSummary,
        check_run,
        demo_structures,
        map_apix_of,
        write_gallery,
    )

    start = time.perf_counter()
    cfg = replace(cfg, kind="class-averages")
    out = check_run(cfg, out, overwrite, preview)
    seed_everything(cfg.seed)
    s, box, n = cfg.averages, cfg.box, cfg.n_per_class
    paths = list(cfg.structures)
    if not paths and s.procedural_share < 1:
        paths = [str(p) for p in demo_structures()]
    pool = [load_atoms(p, keep_waters=cfg.keep_waters, map_apix=map_apix_of(cfg, i))
            for i, p in enumerate(paths)]
    kinds = junk_kinds(n, np.random.default_rng([cfg.seed, 0]))
    jobs = [(label, c, list(range(c * _CHUNK, min(n, (c + 1) * _CHUNK))))
            for label in (1, 2) for c in range(math.ceil(n / _CHUNK))]
    state = _State(pool, s, box, cfg.seed, kinds)

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    tables, examples, apixes, diameters = [], {}, [], {}
    with atomic_dir(out, overwrite=overwrite, marker="run.json") as tmp, Progress(*columns,
                                                               disable=not progress) as bar, \
            _single_thread(), _executor(state, cfg.workers) as run:
        task = bar.add_task("simulating", total=2 * n)
        results: dict[tuple[int, int], tuple[np.ndarray, list[dict[str, object]]]] = {}
        for key, result in run(jobs):
            results[key] = result
            bar.advance(task, len(result[1]))
        for label, name in ((1, GOOD_CLASS), (2, JUNK_CLASS)):
            chunks = [results[(label, c)] for c in range(math.ceil(n / _CHUNK))]
            stack = np.concatenate([c[0] for c in chunks])
            metas = [m for c in chunks for m in c[1]]
            apix = float(np.median([m["params"].apix for m in metas]))  # type: ignore[attr-defined]
            apixes.append(apix)
            write_mrc(tmp / name / f"{name}.mrcs", stack, apix=apix, is_stack=True)
            tables.append(_star_rows(name, label, metas))
            examples[name] = stack[:8]
            diameters[name] = round(float(np.median([m["diameter"] for m in metas])), 1)
        optics = optics_block(float(np.median(apixes)), box).assign(rlnCtfDataAreCtfPremultiplied=0)
        write_star(tmp / "particles.star", pd.concat(tables, ignore_index=True), optics)
        summary = SimSummary(
            out=out, class_names=[GOOD_CLASS, JUNK_CLASS],
            counts={GOOD_CLASS: n, JUNK_CLASS: n},
            diameters=diameters,
            seconds=round(time.perf_counter() - start, 2),
        )
        meta = run_metadata(cfg)
        meta["summary"] = {k: v for k, v in vars(summary).items() if k not in ("out", "star")}
        meta["summary"]["junk_kinds"] = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
        write_json(tmp / "run.json", meta)
    if preview is not None:
        write_gallery(preview, examples)
    return summary
