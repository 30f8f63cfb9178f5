"""``biocnn predict``: classify MRC images, stacks, volumes and STAR files with a trained model.

Inputs are preprocessed exactly as in training (the checkpoint's resolved
:class:`~biocnn.data.PreprocessConfig` and :class:`~biocnn.data.ViewSpec`) and streamed
lazily, so a stack larger than RAM is classified with flat memory: only the ``(N, K)``
class probabilities are kept. Outputs, each written atomically:

* ``--csv``: one row per image: ``index, image, predicted, p_<class>...``;
* ``--star``: a RELION 3.1 STAR file: ``rlnImageName`` (``index@stack``, 1-based, relative
  to the STAR file's folder), ``rlnClassNumber`` (1-based prediction),
  ``rlnMaxValueProbDistribution``, ``biocnnClassName`` and ``biocnnProb_<class>``; a single
  STAR input keeps its columns and optics table;
* ``--select CLASS --out-stack sel.mrcs``: the original pixels of the images predicted as
  ``CLASS`` as a new stack, streamed into a memory-mapped file;
* ``--cam gallery.png``: class-activation maps of the predicted class over the first images.

Example
-------
    >>> cfg = PredictConfig(inputs=("particles.mrcs",), model="runs/x/best.pt",
    ...                     csv="pred.csv")  # doctest: +SKIP
    >>> result = run_predict(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.table import Table

from biocnn.atomic import atomic_path
from biocnn.checkpoint import Classifier, load_classifier
from biocnn.data import (
    MrcDataset,
    ViewSpec,
    files_dataset,
    star_dataset,
)
from biocnn.engine import predict_logits
from biocnn.errors import BiocnnError
from biocnn.io.mrc import MRC_SUFFIXES, ViewKind, inspect_mrc
from biocnn.io.star import StarTable, format_image_name, optics_block, read_star, write_star
from biocnn.plots import plot_heatmap_gallery

__all__ = [
    "PredictConfig",
    "PredictSource",
    "PredictResult",
    "run_predict",
    "expand_inputs",
    "check_output_path",
    "prediction_tables",
    "prediction_json",
]

#: Images per chunk when streaming CSV rows and selected images.
CHUNK = 4096
#: Largest number of images listed one by one in the terminal.
SHOW_IMAGES = 50


@dataclass
class PredictConfig:
    """Options of ``biocnn predict`` (also its TOML keys)."""

    inputs: tuple[str, ...] = ()  # MRC files, folders, globs, STAR files
    model: str = ""  # checkpoint written by `biocnn train`
    csv: str | None = None
    star: str | None = None
    select: str | None = None  # class name or 1-based class number
    min_probability: float = 0.0  # --select keeps images at least this sure
    out_stack: str | None = None
    cam: str | None = None
    cam_count: int = 16
    tta: bool = False
    slice_axis: str | None = None  # None = as in training
    slices: str | int | None = None
    project: bool | None = None
    batch_size: int = 256
    device: str = "auto"
    num_workers: int = 0
    amp: bool = False
    progress: bool = True


@dataclass
class PredictSource:
    """A dataset of predicted images: MRC files, or the particles of one STAR file."""

    dataset: MrcDataset
    star: StarTable | None
    offset: int  # global index of its first image


@dataclass
class PredictResult:
    """Probabilities of every image plus where each came from."""

    class_names: list[str]
    probabilities: np.ndarray  # (N, K) float32
    sources: list[PredictSource]
    inputs: list[dict[str, Any]]  # per input file: images, aggregate prediction, counts
    written: list[Path]
    selected: int | None
    model: str
    tta: bool

    @property
    def predicted(self) -> np.ndarray:
        """``(N,)`` int64 class index per image."""
        return self.probabilities.argmax(1)

    def locate(self, i: int) -> tuple[PredictSource, int]:
        """The source of global image ``i`` and its row in that source's dataset."""
        k = bisect.bisect_right([s.offset for s in self.sources], i) - 1
        return self.sources[k], i - self.sources[k].offset

    def name(self, i: int) -> str:
        """Name of global image ``i`` (``000012@stack.mrcs``, ``map.mrc:z=32``, ...)."""
        src, j = self.locate(i)
        return src.dataset.name(j)


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named by ``patterns``: paths, globs (``**`` recursive) and folders (every MRC
    file below, sorted); duplicates dropped, order kept.

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


def check_output_path(path: str | os.PathLike, option: str) -> Path:
    """Fail early (one line) if ``path`` cannot be written: a folder, or a parent that is a
    file or not writable. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise BiocnnError(f"{option} {path}: is a directory")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BiocnnError(f"{option} {path}: cannot write, {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise BiocnnError(f"{option} {path}: cannot write, {parent} is not writable")
    return path


def _class_index(select: str, names: Sequence[str]) -> int:
    """``--select`` as a class index: a class name, else a 1-based class number."""
    if select in names:
        return list(names).index(select)
    if select.isdigit() and 1 <= int(select) <= len(names):
        return int(select) - 1
    raise BiocnnError(f"--select {select!r}: not a class of the model ({', '.join(names)})")


def _sources(files: Sequence[Path], clf: Classifier, views: ViewSpec) -> list[PredictSource]:
    """One dataset per STAR file and per run of consecutive MRC files, in input order."""
    sources: list[PredictSource] = []
    run: list[Path] = []
    offset = 0

    def add(ds: MrcDataset, star: StarTable | None) -> None:
        nonlocal offset
        sources.append(PredictSource(ds, star, offset))
        offset += len(ds)

    for f in [*files, None]:
        if f is not None and f.suffix.lower() != ".star":
            run.append(f)
            continue
        if run:
            add(files_dataset(run, preprocess=clf.preprocess, views=views), None)
            run = []
        if f is not None:
            add(star_dataset(f, preprocess=clf.preprocess, label_column=None), read_star(f))
    return sources


def _aggregates(
    sources: Sequence[PredictSource], probs: np.ndarray, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per input file (a STAR file counts as one): images, mean probabilities, the class of
    the mean (the aggregate prediction, e.g. over the slices of a volume) and counts."""
    rows = []
    k = len(names)
    for src in sources:
        index = src.dataset.index
        p = probs[src.offset : src.offset + len(index)]
        if src.star is not None:
            groups, labels, layouts = np.zeros(len(index), np.int64), [str(src.star.path)], ["star"]
        else:
            groups, labels, layouts = index.file_id.astype(np.int64), index.files, index.layouts
        sums = np.zeros((len(labels), k))
        np.add.at(sums, groups, p)
        counts = np.zeros((len(labels), k), np.int64)
        np.add.at(counts, (groups, p.argmax(1)), 1)
        n = counts.sum(1)
        for g, label in enumerate(labels):
            mean = sums[g] / max(n[g], 1)
            rows.append({
                "input": label,
                "layout": layouts[g],
                "images": int(n[g]),
                "predicted": names[int(mean.argmax())],
                "probabilities": dict(zip(names, mean.tolist(), strict=True)),
                "counts": dict(zip(names, counts[g].tolist(), strict=True)),
            })
    return rows


def _prob_columns(names: Sequence[str], prefix: str) -> list[str]:
    """One column name per class, ``<prefix><name>`` with non-word characters as ``_``."""
    cols = [prefix + re.sub(r"\W", "_", n) for n in names]
    return cols if len(set(cols)) == len(cols) else [f"{prefix}{i + 1}" for i in range(len(names))]


def write_csv(path: Path, result: PredictResult) -> Path:
    """Write ``index, image, predicted, p_<class>...`` rows, :data:`CHUNK` at a time."""
    names = result.class_names
    cols = _prob_columns(names, "p_")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        for start in range(0, len(result.probabilities), CHUNK):
            stop = min(start + CHUNK, len(result.probabilities))
            p = result.probabilities[start:stop]
            frame = pd.DataFrame({
                "index": np.arange(start, stop),
                "image": [result.name(i) for i in range(start, stop)],
                "predicted": [names[c] for c in p.argmax(1)],
                **{c: p[:, j] for j, c in enumerate(cols)},
            })
            frame.to_csv(fh, header=start == 0, index=False, float_format="%.6g")
    return path


def _file_shapes(ds: MrcDataset) -> list[tuple[int, int]]:
    """``(H, W)`` of the images of each file of ``ds`` (headers only)."""
    index = ds.index
    return [
        ds.views.image_shape(inspect_mrc(f, as_volume=layout == "volume", permissive=index.permissive))
        for f, layout in zip(index.files, index.layouts, strict=True)
    ]


def _image_names(ds: MrcDataset, star_dir: Path) -> list[str]:
    """RELION image names of ``ds``'s rows, paths relative to ``star_dir``."""
    index = ds.index
    rel = [os.path.relpath(os.path.abspath(f), os.path.abspath(star_dir)) for f in index.files]
    return [
        format_image_name(int(s), rel[f]) if index.layouts[f] == "stack" else rel[f]
        for f, s in zip(index.file_id.tolist(), index.section.tolist(), strict=True)
    ]


def _optics_groups(sources: Sequence[PredictSource]) -> tuple[pd.DataFrame, np.ndarray]:
    """A RELION optics table with one group per distinct (pixel size, image size), and the
    ``(N,)`` 1-based group of every image."""
    keys: dict[tuple[float, int], int] = {}
    groups = []
    for src in sources:
        index = src.dataset.index
        sizes = np.asarray([max(s) for s in _file_shapes(src.dataset)])[index.file_id]
        for a, n in zip(index.apix.tolist(), sizes.tolist(), strict=True):
            groups.append(keys.setdefault((round(a, 5), int(n)), len(keys) + 1))
    optics = pd.concat(
        [optics_block(a, n, f"opticsGroup{g}") for (a, n), g in keys.items()], ignore_index=True
    )
    optics["rlnOpticsGroup"] = list(keys.values())
    return optics, np.asarray(groups, dtype=np.int64)


def write_prediction_star(path: Path, result: PredictResult) -> Path:
    """Write the predictions as a RELION 3.1 STAR file (see the module docstring)."""
    star_dir = path.parent
    sources = result.sources
    single_star = len(sources) == 1 and sources[0].star is not None
    if single_star:
        table = sources[0].star
        particles = table.particles.copy()
        if os.path.abspath(star_dir) != os.path.abspath(table.path.parent):
            particles["rlnImageName"] = _image_names(sources[0].dataset, star_dir)
        optics = table.optics
        if optics is None:
            optics, groups = _optics_groups(sources)
            particles["rlnOpticsGroup"] = groups
    else:
        particles = pd.DataFrame({
            "rlnImageName": [n for s in sources for n in _image_names(s.dataset, star_dir)]
        })
        optics, groups = _optics_groups(sources)
        particles["rlnOpticsGroup"] = groups
    probs = result.probabilities
    pred = probs.argmax(1)
    particles["rlnClassNumber"] = pred + 1
    particles["rlnMaxValueProbDistribution"] = probs.max(1)
    particles["biocnnClassName"] = [result.class_names[c] for c in pred]
    for j, col in enumerate(_prob_columns(result.class_names, "biocnnProb_")):
        particles[col] = probs[:, j]
    return write_star(path, particles, optics)


def _iter_rows(result: PredictResult, rows: np.ndarray) -> Iterator[np.ndarray]:
    """Original pixels ``(b, H, W)`` float32 of global images ``rows``, :data:`CHUNK` at a time."""
    for start in range(0, len(rows), CHUNK):
        images = []
        for i in rows[start : start + CHUNK].tolist():
            src, j = result.locate(i)
            images.append(src.dataset.index.read(j))
        yield np.stack(images)


def write_selection(path: Path, result: PredictResult, rows: np.ndarray) -> Path:
    """Stream the original pixels of global images ``rows`` into a new MRC stack at ``path``.

    The stack is preallocated as a memory-mapped file under a temporary name, filled
    :data:`CHUNK` images at a time (header statistics accumulated on the way) and renamed
    into place, so memory stays flat for any selection size.
    """
    shapes, apixes = set(), set()
    for src in result.sources:
        local = rows[(rows >= src.offset) & (rows < src.offset + len(src.dataset))] - src.offset
        if len(local):
            file_shapes = _file_shapes(src.dataset)
            shapes.update(file_shapes[f] for f in np.unique(src.dataset.index.file_id[local]))
            apixes.update(np.round(src.dataset.index.apix[local], 5).tolist())
    if len(shapes) != 1:
        raise BiocnnError(f"--out-stack {path}: the selected images differ in size "
                          f"({', '.join(f'{h}x{w}' for h, w in sorted(shapes))})")
    h, w = shapes.pop()
    apix = apixes.pop() if len(apixes) == 1 else 0.0
    if not apix and len(apixes) > 1:
        warnings.warn(f"--out-stack {path}: mixed pixel sizes, header pixel size set to 0",
                      stacklevel=2)
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    with atomic_path(path, suffix=".mrcs") as tmp:
        with mrcfile.new_mmap(tmp, shape=(len(rows), h, w), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = apix
            start = 0
            for block in _iter_rows(result, rows):
                mrc.data[start : start + len(block)] = block
                start += len(block)
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
                total += float(block.sum(dtype=np.float64))
                total_sq += float(np.square(block, dtype=np.float64).sum())
            n = len(rows) * h * w
            mean = total / n
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
            mrc.header.rms = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))
    return path


def _short_name(name: str) -> str:
    section, at, rest = name.partition("@")
    return f"{section}@{Path(rest).name}" if at else Path(name).name


def write_cam_gallery(path: Path, result: PredictResult, clf: Classifier, count: int) -> Path:
    """Class-activation maps of the predicted class over the first ``count`` images.

    Each map ``(h, w)`` from ``model.class_activation_map`` is upsampled to the box,
    clipped at 0 and scaled to [0, 1] per image, and drawn over the preprocessed image.
    """
    n = min(count, len(result.probabilities))
    x = torch.stack([src.dataset[j][0] for src, j in map(result.locate, range(n))])  # (n, 1, box, box)
    x = clf.standardize(x.to(clf.device)).cpu()
    pred = torch.from_numpy(result.predicted[:n])
    with torch.no_grad():
        cams = clf.model.class_activation_map(x.to(clf.device)).float().cpu()  # (n, K, h, w)
    cam = cams[torch.arange(n), pred][:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam.clamp_min(0)
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    titles = [
        f"{_short_name(result.name(i))}\n{result.class_names[int(pred[i])]} "
        f"{result.probabilities[i, int(pred[i])]:.2f}"
        for i in range(n)
    ]
    return plot_heatmap_gallery(x[:, 0].numpy(), cam.numpy(), titles, path)


def run_predict(cfg: PredictConfig, log: Callable[[str], None] = print) -> PredictResult:
    """Classify every image of ``cfg.inputs`` and write the requested outputs.

    Parameters
    ----------
    cfg
        Resolved options (``inputs`` and ``model`` are required).
    log
        Callable for one-line progress messages.

    Returns
    -------
    PredictResult
        ``(N, K)`` probabilities, per-input aggregates and the files written.

    Raises
    ------
    BiocnnError
        Bad checkpoint, input file or option, or an output that cannot be written (checked
        before any work); no output is then half-written.
    """
    if not cfg.inputs:
        raise BiocnnError("predict: no input files")
    if not cfg.model:
        raise BiocnnError("predict: --model is required")
    outputs = {opt: check_output_path(p, opt) for opt, p in (
        ("--csv", cfg.csv), ("--star", cfg.star), ("--out-stack", cfg.out_stack), ("--cam", cfg.cam)
    ) if p}
    if (cfg.select is None) != (cfg.out_stack is None):
        raise BiocnnError("--select and --out-stack go together")
    if cfg.cam_count < 1:
        raise BiocnnError(f"--cam-count {cfg.cam_count}: must be >= 1")
    clf = load_classifier(cfg.model, cfg.device)
    select = _class_index(cfg.select, clf.class_names) if cfg.select is not None else None
    if cfg.cam and not hasattr(clf.model, "class_activation_map"):
        raise BiocnnError(f"--cam: model {clf.meta['model_name']!r} has no class activation maps")
    overrides = {"slice_axis": cfg.slice_axis, "slices": cfg.slices, "project": cfg.project}
    views = dataclasses.replace(clf.views, **{k: v for k, v in overrides.items() if v is not None})
    sources = _sources(expand_inputs(cfg.inputs), clf, views)
    if cfg.star and any((s.dataset.index.kind != ViewKind.IMAGE).any() for s in sources):
        raise BiocnnError(f"--star {cfg.star}: volume slices have no RELION image name; use --csv")
    n = sum(len(s.dataset) for s in sources)
    log(f"classifying {n} image(s) with {clf.path} ({', '.join(clf.class_names)})"
        + (", 8-fold test-time symmetrisation" if cfg.tta else ""))
    probs = np.concatenate([
        predict_logits(clf.model, s.dataset, batch_size=cfg.batch_size, device=clf.device,
                       num_workers=cfg.num_workers, amp=cfg.amp, tta=cfg.tta,
                       progress=cfg.progress, standardize=clf.standardize).softmax(1).numpy()
        for s in sources
    ]).astype(np.float32)
    result = PredictResult(
        class_names=clf.class_names, probabilities=probs, sources=sources,
        inputs=_aggregates(sources, probs, clf.class_names), written=[], selected=None,
        model=str(clf.path), tta=cfg.tta,
    )
    if "--csv" in outputs:
        result.written.append(write_csv(outputs["--csv"], result))
    if "--star" in outputs:
        result.written.append(write_prediction_star(outputs["--star"], result))
    if select is not None:
        rows = np.flatnonzero((result.predicted == select)
                              & (probs[:, select] >= cfg.min_probability))
        result.selected = len(rows)
        if len(rows):
            result.written.append(write_selection(outputs["--out-stack"], result, rows))
        else:
            warnings.warn(f"no image predicted as {clf.class_names[select]!r}: "
                          f"{cfg.out_stack} not written", stacklevel=2)
    if "--cam" in outputs:
        result.written.append(write_cam_gallery(outputs["--cam"], result, clf, cfg.cam_count))
    return result


def prediction_json(result: PredictResult) -> dict[str, Any]:
    """A JSON-ready summary: class counts and, per input file, the aggregate prediction
    (for a single image: its class and probabilities)."""
    counts = np.bincount(result.predicted, minlength=len(result.class_names))
    return {
        "model": result.model,
        "class_names": result.class_names,
        "tta": result.tta,
        "images": int(len(result.probabilities)),
        "counts": dict(zip(result.class_names, counts.tolist(), strict=True)),
        "inputs": result.inputs,
        "selected": result.selected,
        "written": [str(p) for p in result.written],
    }


def prediction_tables(result: PredictResult) -> list[Table]:
    """Rich tables: every image (up to :data:`SHOW_IMAGES`) or class counts, and the
    aggregate of each input with more than one image (e.g. a volume's slices)."""
    names = result.class_names
    probs = result.probabilities
    n = len(probs)
    tables = []
    if n <= SHOW_IMAGES:
        table = Table(title="predictions")
        table.add_column("image")
        table.add_column("class", style="bold")
        for name in names:
            table.add_column(f"p({name})", justify="right")
        for i in range(n):
            table.add_row(_short_name(result.name(i)), names[int(probs[i].argmax())],
                          *(f"{v:.3f}" for v in probs[i]))
    else:
        pred = result.predicted
        table = Table(title=f"predictions ({n} images; per image: --csv or --star)")
        for col in ("class", "images", "fraction", "mean p"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for c, name in enumerate(names):
            hit = pred == c
            mean = f"{probs[hit, c].mean():.3f}" if hit.any() else "-"
            table.add_row(name, str(int(hit.sum())), f"{hit.mean():.3f}", mean)
    tables.append(table)
    multi = [r for r in result.inputs if r["images"] > 1]
    if multi and len(multi) <= SHOW_IMAGES:
        agg = Table(title="per input (class of the mean probability)")
        for col in ("input", "layout", "images", "class", "mean p", "counts"):
            agg.add_column(col, justify="right" if col in ("images", "mean p") else "left")
        for r in multi:
            agg.add_row(Path(r["input"]).name, r["layout"], str(r["images"]), r["predicted"],
                        f"{r['probabilities'][r['predicted']]:.3f}",
                        ", ".join(f"{k}: {v}" for k, v in r["counts"].items() if v))
        tables.append(agg)
    return tables
