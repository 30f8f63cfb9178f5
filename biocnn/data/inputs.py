"""Input discovery shared by ``predict``, ``evaluate`` and ``select``: from what the user typed
(MRC files, folders, globs, RELION STAR files, cryoSPARC ``.cs`` files) to datasets.

:func:`expand_inputs` turns patterns into files; :func:`open_inputs` turns files into
:class:`InputSource` s, one per STAR or ``.cs`` file (its particle rows, in order) and one per
run of consecutive MRC files, each with a global ``offset`` so predictions of all sources
can be concatenated and mapped back.

Example
-------
    >>> sources = open_inputs(["Extract/job005/particles.star"], preprocess=clf.preprocess,
    ...                       views=clf.views)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from biocnn.data.datasets import MrcDataset, files_dataset, refs_dataset, star_dataset
from biocnn.data.preprocess import PreprocessConfig
from biocnn.errors import BiocnnError
from biocnn.io import refuse_unsupported, sniff_format
from biocnn.io.cs import read_cs
from biocnn.io.mrc import MRC_SUFFIXES, ViewKind, ViewSpec
from biocnn.io.star import StarTable, read_star

__all__ = ["MEMORY_BUDGET", "InputSource", "Inputs", "batch_for", "forward_bytes", "expand_inputs",
           "open_inputs", "input_kind"]

#: Bytes one prediction/evaluation batch (reading, resampling and the forward pass) or one
#: block of a written stack may cost: with ~330 MB for Python, torch and the model this
#: keeps the peak under 1 GB for any image size and count (issue 12); the heap's high-water
#: mark drifts up with the number of batches, hence the margin (BENCHMARKS.md).
MEMORY_BUDGET = 160 * 2**20


def batch_for(data: MrcDataset, batch_size: int, budget: int | None = None,
              model_bytes: int = 0) -> int:
    """``batch_size`` capped so one batch of ``data`` costs at most ``budget`` bytes
    (default :data:`MEMORY_BUDGET`): reading and resampling
    (:meth:`MrcDataset.bytes_per_image`) plus ``model_bytes`` per image for the forward
    pass (:func:`forward_bytes`); at least 1."""
    budget = MEMORY_BUDGET if budget is None else budget
    return max(1, min(batch_size, budget // max(data.bytes_per_image() + model_bytes, 1)))


def forward_bytes(model: torch.nn.Module, box: int, device: torch.device | str = "cpu",
                  tta: bool = False) -> int:
    """Bytes one ``(1, box, box)`` image costs in an inference forward pass of ``model``: the
    sum of every leaf module's float32 output (measured with one image; an upper bound of
    what is alive at once: 3.75 MB against 2.1 MB measured for the default model at 128 px),
    plus the 8 rotated copies of the input under ``tta``."""
    sizes: list[int] = []

    def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * 4)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, box, box, device=device))
    finally:
        for h in handles:
            h.remove()
    return sum(sizes) + (8 * 4 * box * box if tta else 0)


@dataclass
class InputSource:
    """The images of one STAR or ``.cs`` file, or of a run of MRC files.

    Attributes
    ----------
    dataset
        Its images, in the order of the file's rows (STAR/``.cs``) or of the files.
    kind
        ``"mrc"``, ``"star"`` or ``"cs"``.
    path
        The STAR or ``.cs`` file (None for MRC files).
    table
        The particle table read from ``path`` (:class:`~biocnn.io.star.StarTable` or
        ``biocnn.io.cs.CsTable``; None for MRC files).
    offset
        Global index of its first image.
    """

    dataset: MrcDataset
    kind: str
    path: Path | None
    table: Any
    offset: int

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class Inputs:
    """Every source of a command, in input order; global image ``i`` is row ``i - offset``
    of the source that holds it."""

    sources: list[InputSource]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def locate(self, i: int) -> tuple[InputSource, int]:
        """The source of global image ``i`` and its row there."""
        k = bisect.bisect_right([s.offset for s in self.sources], i) - 1
        return self.sources[k], i - self.sources[k].offset

    def name(self, i: int) -> str:
        """Name of global image ``i`` (``000012@stack.mrcs``, ``map.mrc:z=32``, ...)."""
        src, j = self.locate(i)
        return src.dataset.name(j)

    def files(self) -> list[Path]:
        """Every file read: STAR/``.cs`` tables and the MRC files (outputs must differ)."""
        out: dict[Path, None] = {}
        for s in self.sources:
            if s.path is not None:
                out[s.path] = None
            out.update(dict.fromkeys(Path(f) for f in s.dataset.index.files))
        return list(out)

    @property
    def has_volume_views(self) -> bool:
        """True when some image is a volume slice or projection (no RELION image name)."""
        return any((s.dataset.index.kind != ViewKind.IMAGE).any() for s in self.sources)


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named by ``patterns``: paths, globs (``**`` recursive) and folders (every MRC
    file below, sorted; hidden files skipped); duplicates dropped, order kept.

    Raises
    ------
    BiocnnError
        A path that does not exist, a glob without matches, a folder without MRC files.
    """
    out: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.exists():
            matches = [path]
        elif _has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            if not matches:
                raise BiocnnError(f"{pattern}: no files match")
        else:
            raise BiocnnError(f"input {pattern} not found")
        for m in matches:
            if m.is_dir():
                files = sorted(
                    p for p in m.rglob("*")
                    if p.is_file() and p.suffix.lower() in MRC_SUFFIXES and not p.name.startswith(".")
                )
                if not files:
                    raise BiocnnError(f"{m}: no .mrc/.mrcs/.map files")
                out.update(dict.fromkeys(files))
            else:
                out[m] = None
    return list(out)


def input_kind(path: str | os.PathLike) -> str:
    """``"star"``, ``"cs"`` or ``"mrc"`` for an input file: by suffix, else by its first bytes;
    formats biocnn never reads (TIFF, EER, HDF5, archives, images) are refused in one line."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        return "star"
    if suffix == ".cs":
        return "cs"
    kind = sniff_format(path)
    refuse_unsupported(path, kind)
    return kind if kind in ("star", "cs") else "mrc"


def _cs_dataset(
    path: Path, preprocess: PreprocessConfig, apix: float | None, project: str | None
) -> tuple[MrcDataset, Any]:
    """The particles of a cryoSPARC ``.cs`` file (``blob/path``, ``blob/idx``,
    ``blob/psize_A``), every referenced file read as a stack."""
    table = read_cs(path, project_dir=project)
    paths, sections = table.image_refs()
    if not len(sections):
        raise BiocnnError(f"{path}: no particles")
    data = refs_dataset(path, paths, sections, table.pixel_sizes(), preprocess=preprocess,
                        apix=apix, missing_hint=" (is cs_project the cryoSPARC project folder?)")
    return data, table


def open_inputs(
    patterns: Sequence[str],
    *,
    preprocess: PreprocessConfig,
    views: ViewSpec,
    apix: float | None = None,
    cs_project: str | os.PathLike | None = None,
) -> Inputs:
    """Datasets of every image named by ``patterns``: one source per STAR / ``.cs`` file and
    per run of consecutive MRC files, in input order.

    Parameters
    ----------
    patterns
        Paths, globs and folders (:func:`expand_inputs`).
    preprocess
        The model's resolved preprocessing (box, pixel size).
    views
        How MRC files are read (``as_volume`` = ``--volume/--stack``; volume views); files
        reached through STAR or ``.cs`` rows are always stacks.
    apix
        Pixel size in Å of every image, instead of the STAR / ``.cs`` / header values.
    cs_project
        The cryoSPARC project folder that ``.cs`` ``blob/path`` values are relative to.
    """
    sources: list[InputSource] = []
    run: list[Path] = []
    offset = 0

    def add(ds: MrcDataset, kind: str, path: Path | None, table: object) -> None:
        nonlocal offset
        sources.append(InputSource(ds, kind, path, table, offset))
        offset += len(ds)

    for f in [*expand_inputs(patterns), None]:
        kind = input_kind(f) if f is not None else "end"
        if kind == "mrc":
            run.append(f)  # type: ignore[arg-type]
            continue
        if run:
            add(files_dataset(run, preprocess=preprocess, views=views, apix=apix), "mrc", None, None)
            run = []
        if kind == "star":
            table: StarTable = read_star(f)  # type: ignore[arg-type]
            add(star_dataset(f, preprocess=preprocess, label_column=None, apix=apix), "star", f, table)  # type: ignore[arg-type]
        elif kind == "cs":
            ds, cs = _cs_dataset(f, preprocess, apix,  # type: ignore[arg-type]
                                 None if cs_project is None else os.fspath(cs_project))
            add(ds, "cs", f, cs)
    return Inputs(sources)
