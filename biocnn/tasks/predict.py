"""``biocnn predict``: classify MRC images, stacks, volumes, STAR and cryoSPARC ``.cs`` files.

Inputs are read as in training (the checkpoint's preprocessing and views; standardisation on
the device by the model's input module) and streamed in batches sized by bytes
(:data:`~biocnn.data.inputs.MEMORY_BUDGET`), so memory stays flat whatever the image size
and count: only the ``(N, K)`` probabilities are kept. Outputs, each checked before any work and written
atomically:

* ``--csv``: one row per image: ``index, image, predicted, p_<class>...``;
* ``--star``: a RELION 3.1/4/5 STAR file: the input rows unchanged, a complete optics
  table, image names resolvable from ``--relion-project`` (default: the working folder)
  and the predictions in new ``biocnn*`` columns (:mod:`biocnn.io.relion`);
* ``--select CLASS --out-stack sel.mrcs``: the original pixels of the images predicted as
  ``CLASS`` as a new stack, plus ``sel.star``: the subset of the particle rows (all columns
  kept, as ``--star`` writes them; not for volume slices, which have no RELION name);
* ``--select CLASS --out-cs sel.cs``: the selected rows of a ``.cs`` input, for cryoSPARC;
* ``--cam gallery.png``: class-activation maps of the predicted class over the first images.

Example
-------
    >>> cfg = PredictConfig(inputs=("particles.mrcs",), model="runs/x/best.pt",
    ...                     csv="pred.csv")  # doctest: +SKIP
    >>> result = run_predict(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from biocnn.atomic import check_outputs
from biocnn.checkpoint import Classifier, load_classifier
from biocnn.config import PredictConfig
from biocnn.data.inputs import (
    MEMORY_BUDGET,
    Inputs,
    batch_for,
    expand_inputs,
    forward_bytes,
    open_inputs,
)
from biocnn.engine import predict_logits
from biocnn.errors import BiocnnError, OptionError
from biocnn.io.relion import (
    add_predictions,
    complete_optics,
    rebase_names,
    relion_name,
)
from biocnn.io.star import write_star
from biocnn.io.writers import write_csv, write_stack
from biocnn.plots import plot_heatmap_gallery
from biocnn.report import input_aggregates, layout_lines, short_name

__all__ = [
    "PredictConfig",
    "PredictResult",
    "run_predict",
    "class_index",
    "relion_tables",
    "selection_star",
    "write_selection",
]

@dataclass
class PredictResult:
    """Probabilities of every image plus where each came from."""

    class_names: list[str]
    probabilities: np.ndarray  # (N, K) float32
    inputs: Inputs
    aggregates: list[dict[str, Any]]  # per input file: images, aggregate prediction, counts
    written: list[Path]
    selected: int | None
    model: str
    tta: bool
    relion_project: str = "."

    @property
    def predicted(self) -> np.ndarray:
        """``(N,)`` int64 class index per image."""
        return self.probabilities.argmax(1)

    def name(self, i: int) -> str:
        """Name of global image ``i`` (``000012@stack.mrcs``, ``map.mrc:z=32``, ...)."""
        return self.inputs.name(i)


def class_index(select: str, names: Sequence[str]) -> int:
    """``--select`` as a class index: a class name, else a 1-based class number."""
    if select in names:
        return list(names).index(select)
    if select.isdigit() and 1 <= int(select) <= len(names):
        return int(select) - 1
    raise OptionError("select", repr(select), f"not a class of the model ({', '.join(names)})")


def selection_star(out_stack: str | os.PathLike) -> Path:
    """The STAR file written beside ``--out-stack`` (same name, ``.star``)."""
    return Path(out_stack).with_suffix(".star")


def _check_options(cfg: PredictConfig) -> None:
    """One-line errors for options that cannot work, before anything is read."""
    if not cfg.inputs:
        raise BiocnnError("predict: no input files")
    if not cfg.model:
        raise OptionError("model", None, "a checkpoint is required")
    if cfg.select is None and (cfg.out_stack or cfg.out_cs):
        field = "out_stack" if cfg.out_stack else "out_cs"
        raise OptionError(field, getattr(cfg, field), "needs a class to select", fix="select")
    if cfg.select is not None and not (cfg.out_stack or cfg.out_cs):
        raise OptionError("select", cfg.select, "needs an output for the selection", fix="out_stack")
    if cfg.cam_count < 1:
        raise OptionError("cam_count", cfg.cam_count, "must be >= 1")
    if cfg.apix is not None and not (math.isfinite(cfg.apix) and cfg.apix > 0):
        raise OptionError("apix", cfg.apix, "must be > 0")
    if cfg.batch_size < 1:
        raise OptionError("batch_size", cfg.batch_size, "must be >= 1")
    if not Path(cfg.relion_project).is_dir():
        raise OptionError("relion_project", cfg.relion_project, "not a folder")


def _outputs(cfg: PredictConfig, read: Sequence[Path]) -> dict[str, Path]:
    """Every output checked against every input (:func:`~biocnn.atomic.check_outputs`)."""
    stack = (cfg.out_stack, selection_star(cfg.out_stack)) if cfg.out_stack else None
    return check_outputs({"csv": cfg.csv, "star": cfg.star, "out_stack": stack, "out_cs": cfg.out_cs,
                          "cam": cfg.cam}, inputs=[Path(cfg.model), *read], overwrite=cfg.overwrite)


def run_predict(cfg: PredictConfig, log: Callable[[str], None] = print) -> PredictResult:
    """Classify every image of ``cfg.inputs`` and write the requested outputs.

    Raises
    ------
    BiocnnError
        Bad checkpoint, input file or option, or an output that cannot be written or would
        replace an input (checked before any work); no output is then half-written.
    """
    _check_options(cfg)
    _outputs(cfg, expand_inputs(cfg.inputs))  # before the model is loaded
    clf = load_classifier(cfg.model, cfg.device)
    select = class_index(cfg.select, clf.class_names) if cfg.select is not None else None
    if cfg.cam and not hasattr(clf.model, "class_activation_map"):
        raise OptionError("cam", cfg.cam, f"model {clf.meta['model_name']!r} has no class activation maps")
    overrides = {"slice_axis": cfg.slice_axis, "slices": cfg.slices, "project": cfg.project,
                 "as_volume": cfg.as_volume}
    views = dataclasses.replace(clf.views, **{k: v for k, v in overrides.items() if v is not None})
    inputs = open_inputs(cfg.inputs, preprocess=clf.preprocess, views=views, apix=cfg.apix,
                         cs_project=cfg.cs_project)
    outputs = _outputs(cfg, inputs.files())  # now also the stacks that STAR/.cs rows name
    _check_writable(cfg, inputs)
    for line in layout_lines(inputs):
        log(line)
    log(f"classifying {len(inputs)} image(s) with {clf.path} ({', '.join(clf.class_names)})"
        + (", 8-fold test-time symmetrisation" if cfg.tta else ""))
    probs = _probabilities(clf, inputs, cfg)
    result = PredictResult(
        class_names=clf.class_names, probabilities=probs, inputs=inputs,
        aggregates=input_aggregates(inputs, probs, clf.class_names), written=[], selected=None,
        model=str(clf.path), tta=cfg.tta, relion_project=cfg.relion_project,
    )
    if "csv" in outputs:
        result.written.append(write_csv(outputs["csv"], probs, clf.class_names, inputs.name))
    tables = functools.cache(lambda: relion_tables(result))  # built once, only if written
    if "star" in outputs:
        result.written.append(write_star(outputs["star"], *tables()))
    if select is not None:
        rows = np.flatnonzero((result.predicted == select) & (probs[:, select] >= cfg.min_probability))
        result.selected = len(rows)
        if len(rows):
            result.written += _write_selection(outputs, result, rows, tables)
        else:
            warnings.warn(f"no image predicted as {clf.class_names[select]!r}: nothing selected, "
                          "no selection written", stacklevel=2)
    if "cam" in outputs:
        result.written.append(write_cam_gallery(outputs["cam"], result, clf, cfg.cam_count))
    return result


def _check_writable(cfg: PredictConfig, inputs: Inputs) -> None:
    """Outputs the inputs cannot give, refused before any work."""
    if cfg.star and inputs.has_volume_views:
        raise OptionError("star", cfg.star, "volume slices have no RELION image name", fix="csv")
    if cfg.out_cs and (len(inputs.sources) != 1 or inputs.sources[0].kind != "cs"):
        raise OptionError("out_cs", cfg.out_cs, "needs exactly one cryoSPARC .cs input")
    tables = [s for s in inputs.sources if s.kind == "star"]
    if cfg.star and tables and len(inputs.sources) > 1 and (
            len(tables) != len(inputs.sources)
            or any(list(s.table.particles.columns) != list(tables[0].table.particles.columns)
                   for s in tables[1:])):
        raise OptionError("star", cfg.star, "the inputs have different particle columns (STAR files "
                          "with other columns, or MRC files next to a STAR file); predict them "
                          "separately")


def _probabilities(clf: Classifier, inputs: Inputs, cfg: PredictConfig) -> np.ndarray:
    """``(N, K)`` float32 class probabilities of every image, batches sized by bytes."""
    model_bytes = forward_bytes(clf.model, clf.box, clf.device, cfg.tta)
    parts = [
        predict_logits(clf.model, s.dataset, device=clf.device, num_workers=cfg.num_workers,
                       batch_size=batch_for(s.dataset, cfg.batch_size, model_bytes=model_bytes),
                       amp=cfg.amp, tta=cfg.tta, progress=cfg.progress,
                       standardize=clf.standardize).softmax(1).numpy()
        for s in inputs.sources
    ]
    return np.concatenate(parts).astype(np.float32)


def _write_selection(
    outputs: dict[str, Path], result: PredictResult, rows: np.ndarray,
    tables: Callable[[], tuple[pd.DataFrame, pd.DataFrame]],
) -> list[Path]:
    """The selection outputs asked for: stack + its STAR, ``.cs`` subset."""
    written = []
    if "out_stack" in outputs:
        written.append(write_selection(outputs["out_stack"], result.inputs, rows))
        if not result.inputs.has_volume_views:  # volume slices have no RELION image name
            particles, optics = tables()
            written.append(write_star(selection_star(outputs["out_stack"]),
                                             particles.iloc[rows].reset_index(drop=True), optics))
    if "out_cs" in outputs:
        from biocnn.io.cs import write_cs

        source = result.inputs.sources[0]
        written.append(write_cs(outputs["out_cs"], source.table, rows))
    return written


def _source_particles(source: Any, project: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The particle rows of one source with image names resolvable from ``project``."""
    index = source.dataset.index
    files = [index.files[f] for f in index.file_id.tolist()]
    if source.kind == "star":
        particles = source.table.particles.copy()
        particles["rlnImageName"] = rebase_names(particles["rlnImageName"].astype(str).tolist(),
                                                 files, project)
        return particles, source.table.optics
    names = [relion_name(f, int(s) if index.layouts[fid] == "stack" else None, project)
             for f, fid, s in zip(files, index.file_id.tolist(), index.section.tolist(), strict=True)]
    return pd.DataFrame({"rlnImageName": names}), None


def relion_tables(result: PredictResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RELION particles (input rows + prediction columns) and optics tables of every
    image (:mod:`biocnn.io.relion`); optics groups of several sources are renumbered."""
    parts, optics_tables, defaulted = [], [], set()
    next_group = 0
    for source in result.inputs.sources:
        rows, optics = _source_particles(source, result.relion_project)
        data = source.dataset
        size = np.asarray([max(s) for s in data.source_shapes])[data.index.file_id]
        rows, optics, missing = complete_optics(rows, optics, data.index.apix, size)
        defaulted.update(missing)
        if next_group:  # several sources: keep each source's groups apart
            mapping = {g: g + next_group for g in optics["rlnOpticsGroup"].astype(int)}
            optics["rlnOpticsGroup"] = optics["rlnOpticsGroup"].astype(int).map(mapping)
            rows["rlnOpticsGroup"] = rows["rlnOpticsGroup"].astype(int).map(mapping)
        next_group = int(optics["rlnOpticsGroup"].max())
        parts.append(rows)
        optics_tables.append(optics)
    for what, tables in (("particle", parts), ("optics", optics_tables)):
        if any(list(t.columns) != list(tables[0].columns) for t in tables[1:]):
            raise BiocnnError(f"the inputs have different {what} columns; predict them separately")
    if any((t["rlnImagePixelSize"] <= 0).any() for t in optics_tables):
        warnings.warn("pixel size unknown for some images: rlnImagePixelSize written as 0 "
                      "(set the apix option)", stacklevel=3)
    if defaulted:
        warnings.warn(f"{', '.join(sorted(defaulted))} not recorded in the input: written as "
                      "300 kV / 2.7 mm / 0.1 (edit data_optics if your microscope differs)",
                      stacklevel=3)
    particles = pd.concat(parts, ignore_index=True)
    optics = pd.concat(optics_tables, ignore_index=True)
    return add_predictions(particles, result.probabilities, result.class_names), optics


def _selected_blocks(inputs: Inputs, rows: np.ndarray, block: int) -> Iterator[np.ndarray]:
    """Original pixels ``(b, H, W)`` float32 of global images ``rows``, ``block`` at a time
    (one buffer reused, so one block is alive)."""
    out: np.ndarray | None = None
    for start in range(0, len(rows), block):
        part = rows[start : start + block].tolist()
        for k, i in enumerate(part):
            src, j = inputs.locate(i)
            image = src.dataset.index.read(j)  # a stack image or a volume view
            if out is None:
                out = np.empty((block, *image.shape), np.float32)
            out[k] = image
        assert out is not None
        yield out[: len(part)]


def write_selection(path: Path, inputs: Inputs, rows: np.ndarray) -> Path:
    """Write the original pixels of global images ``rows`` of ``inputs`` as a new float32
    MRC stack (``predict --out-stack``, ``select``'s good/bad stacks).

    Blocks of at most a quarter of :data:`MEMORY_BUDGET` are appended sequentially
    (:func:`~biocnn.io.writers.write_stack`), so memory stays flat for any selection. The
    header pixel size is the images' own, or 0 (with a warning) when they differ.
    """
    shapes, apixes = set(), set()
    for src in inputs.sources:
        local = rows[(rows >= src.offset) & (rows < src.offset + len(src))] - src.offset
        if len(local):
            index = src.dataset.index
            shapes.update(src.dataset.source_shapes[f] for f in np.unique(index.file_id[local]))
            apixes.update(np.round(np.maximum(index.apix[local], 0.0), 5).tolist())
    if len(shapes) != 1:
        raise BiocnnError(f"{path}: the selected images differ in size "
                          f"({', '.join(f'{h}x{w}' for h, w in sorted(shapes))})")
    h, w = shapes.pop()
    apix = apixes.pop() if len(apixes) == 1 else 0.0
    if len(apixes) > 1:
        warnings.warn(f"{path}: mixed pixel sizes in the selection, header pixel size set to 0",
                      stacklevel=2)
    block = max(1, MEMORY_BUDGET // 4 // (4 * h * w))  # writing gains nothing from large blocks
    return write_stack(path, _selected_blocks(inputs, rows, block), len(rows), (h, w), apix)


def write_cam_gallery(path: Path, result: PredictResult, clf: Classifier, count: int) -> Path:
    """Class-activation maps of the predicted class over the first ``count`` images.

    Each map ``(h, w)`` from ``model.class_activation_map`` is upsampled to the box,
    clipped at 0 and scaled to [0, 1] per image, and drawn over the standardised image.
    """
    n = min(count, len(result.probabilities))
    x = torch.stack([src.dataset[j][0] for src, j in map(result.inputs.locate, range(n))])
    x = clf.standardize(x.to(clf.device))  # (n, 1, box, box)
    pred = torch.from_numpy(result.predicted[:n])
    with torch.no_grad():
        cams = clf.model.class_activation_map(x).float().cpu()  # (n, K, h, w)
    x = x.cpu()
    cam = cams[torch.arange(n), pred][:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam.clamp_min(0)
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    titles = [
        f"{short_name(result.name(i))}\n{result.class_names[int(pred[i])]} "
        f"{result.probabilities[i, int(pred[i])]:.2f}"
        for i in range(n)
    ]
    return plot_heatmap_gallery(x[:, 0].numpy(), cam.numpy(), titles, path)
