"""``biocnn evaluate``: accuracy, per-class metrics and shift robustness of a trained model.

:func:`run_evaluate` streams a labelled dataset (folder per class or STAR file) through
the checkpoint's own preprocessing, in batches sized by bytes, and for every batch also
classifies copies moved by ``r`` pixels in random directions (zero fill), copies rotated
by each of ``angles``, and pairs of random views of the same image: two random shifts
(consistency, Zhang 2019), two random rotations and two random sub-pixel shifts within
one pixel. Rotations and sub-pixel shifts are band-limited (Fourier shears and phase
ramps: what a detector records of a turned or moved particle); the same consistencies
with bilinear interpolation, which also blurs the noise, are reported beside them. It writes, atomically::

    <out>/evaluation.json       accuracy, loss, per-class metrics, confusion, shift and
                                rotation robustness, consistencies
    <out>/confusion.png         confusion matrix
    <out>/shift_accuracy.png    accuracy against shift length
    <out>/rotation_accuracy.png accuracy against rotation angle
    <out>/run.json           version, command line, resolved config

Example
-------
    >>> cfg = EvaluateConfig(data="maps/", model="runs/x/best.pt", out="runs/eval")  # doctest: +SKIP
    >>> result = run_evaluate(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from torch import Tensor

from biocnn.atomic import atomic_dir, write_json
from biocnn.checkpoint import load_classifier
from biocnn.config import EvaluateConfig, run_metadata, to_plain
from biocnn.data import build_dataset, make_loader
from biocnn.data.inputs import Inputs, InputSource, batch_for, forward_bytes
from biocnn.engine import predict_logits
from biocnn.errors import OptionError
from biocnn.metrics import (
    classification_summary,
    consistency,
    placement_summary,
    rotated_correct,
    shifted_correct,
    transform_consistency,
)
from biocnn.plots import plot_accuracy_vs_angle, plot_accuracy_vs_shift, plot_confusion
from biocnn.report import layout_lines

__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "run_evaluate",
    "default_shifts",
]


@dataclass
class EvaluateResult:
    """What :func:`run_evaluate` returns; ``report`` is ``evaluation.json``."""

    out_dir: Path
    report: dict[str, Any]


#: Rotation angles evaluated by default, in degrees.
DEFAULT_ANGLES = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]


def default_shifts(box: int) -> list[float]:
    """Shift lengths ``0, 2, 4, 8, ...`` px up to a quarter of the ``box``."""
    shifts, r = [0.0], 2
    while r <= box / 4:
        shifts.append(float(r))
        r *= 2
    return shifts


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it."""
    p, f = os.path.abspath(path), os.path.abspath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _check_out(out: Path, read: list[Path], overwrite: bool) -> None:
    """Refuse an ``--out`` folder that holds an input (it is replaced as a whole) or, without
    ``overwrite``, a non-empty one; nothing is created."""
    for path in read:
        if _inside(path, out):
            raise OptionError("out", out, f"would replace the input {path}; choose another folder")
    if out.exists() and not out.is_dir():
        raise OptionError("out", out, "is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OptionError("out", out, "exists and is not empty", fix="overwrite")


def run_evaluate(cfg: EvaluateConfig, log: Callable[[str], None] = print) -> EvaluateResult:
    """Evaluate checkpoint ``cfg.model`` on the labelled data ``cfg.data``.

    Parameters
    ----------
    cfg
        Resolved options (``data``, ``model`` and ``out`` are required).
    log
        Callable for one-line progress messages.

    Returns
    -------
    EvaluateResult
        Output folder and the report written to ``evaluation.json``.

    Raises
    ------
    BiocnnError
        Bad checkpoint, data (classes the model does not know included) or output folder;
        the output folder is then not created.
    """
    for field in ("data", "model", "out"):
        if not getattr(cfg, field):
            raise OptionError(field, None, "is required")
    if any(not math.isfinite(s) or s < 0 for s in cfg.shifts):
        raise OptionError("shifts", ",".join(map(str, cfg.shifts)), "must be >= 0")
    if cfg.consistency_shift is not None and cfg.consistency_shift < 0:
        raise OptionError("consistency_shift", cfg.consistency_shift, "must be >= 0")
    if cfg.apix is not None and not (math.isfinite(cfg.apix) and cfg.apix > 0):
        raise OptionError("apix", cfg.apix, "must be > 0")
    out = Path(cfg.out)
    _check_out(out, [Path(cfg.data), Path(cfg.model)], cfg.overwrite)
    clf = load_classifier(cfg.model, cfg.device)
    views = clf.views if cfg.as_volume is None else dataclasses.replace(clf.views,
                                                                        as_volume=cfg.as_volume)
    data = build_dataset(
        cfg.data, preprocess=clf.preprocess, views=views, label_column=cfg.label_column,
        class_names=clf.class_names, apix=cfg.apix,
    )
    _check_out(out, [Path(f) for f in data.index.files], cfg.overwrite)
    star = Path(cfg.data) if Path(cfg.data).suffix.lower() == ".star" else None
    for line in layout_lines(Inputs([InputSource(data, "star" if star else "mrc", star, None, 0)])):
        log(line)
    batch = batch_for(data, cfg.batch_size,
                      model_bytes=forward_bytes(clf.model, clf.box, clf.device, cfg.tta))
    with atomic_dir(out, overwrite=cfg.overwrite, marker="evaluation.json") as tmp:
        box = clf.box
        shifts = [float(s) for s in cfg.shifts] or default_shifts(box)
        c_shift = (
            max(1, round(0.08 * box)) if cfg.consistency_shift is None else int(cfg.consistency_shift)
        )
        log(f"evaluating {clf.path} on {len(data)} images "
            f"({', '.join(f'{k}: {v}' for k, v in data.class_counts().items())})"
            + (" with 8-fold test-time symmetrisation" if cfg.tta else ""))

        def predict(x: Tensor) -> Tensor:
            return predict_logits(clf.model, x, batch_size=batch, device=clf.device,
                                  amp=cfg.amp, tta=cfg.tta)

        generator = torch.Generator().manual_seed(cfg.seed)
        loader = make_loader(data, batch, num_workers=cfg.num_workers)
        angles = [float(a) for a in cfg.angles] or DEFAULT_ANGLES
        logits, correct, turned, agree, agree_rot, agree_sub, agree_bil = [], [], [], 0.0, 0.0, 0.0, 0.0
        agree_rot_bil = 0.0
        for x, y in track(loader, description="evaluate", console=Console(stderr=True),
                          disable=not cfg.progress):
            # standardised before the moves, as in training (zero fill = background)
            x = clf.standardize(x.to(clf.device))
            logits.append(predict(x))
            correct.append(shifted_correct(predict, x, y, shifts, generator))
            turned.append(rotated_correct(predict, x, y, angles, fourier=True))
            agree_rot += transform_consistency(predict, x, generator, rotate=True, fourier=True) * len(x)
            agree_rot_bil += transform_consistency(predict, x, generator, rotate=True) * len(x)
            agree_sub += transform_consistency(predict, x, generator, max_shift=1.0, fourier=True) * len(x)
            agree_bil += transform_consistency(predict, x, generator, max_shift=1.0) * len(x)
            agree += consistency(predict, x, c_shift, generator) * len(x)
        all_logits = torch.cat(logits)
        labels = torch.from_numpy(data.labels)
        hits = np.concatenate(correct)
        rot_hits = np.concatenate(turned)
        report = {
            "model": str(clf.path),
            "model_name": clf.meta["model_name"],
            "data": str(cfg.data),
            "tta": cfg.tta,
            "class_names": clf.class_names,
            **classification_summary(all_logits, labels, clf.class_names),
            "loss": float(F.cross_entropy(all_logits, labels)),
            "shift_robustness": {
                "fill": "zeros",
                "shifts_px": shifts,
                "shifts_fraction_of_box": [s / box for s in shifts],
                "accuracy": hits.mean(0).tolist(),
                **placement_summary(hits),
                "consistency": agree / len(data),
                "consistency_max_shift_px": c_shift,
                "subpixel_consistency": agree_sub / len(data),
                "subpixel_consistency_bilinear": agree_bil / len(data),
            },
            "rotation_robustness": {
                "fill": "circular",
                "interpolation": "fourier",
                "angles_deg": angles,
                "accuracy": rot_hits.mean(0).tolist(),
                **placement_summary(rot_hits),
                "consistency": agree_rot / len(data),
                "consistency_bilinear": agree_rot_bil / len(data),
            },
            "preprocess": clf.preprocess.to_dict(),
            "views": views.to_dict(),
            "apix": cfg.apix,
        }
        write_json(tmp / "evaluation.json", report)
        plot_confusion(np.asarray(report["confusion"]), clf.class_names, tmp / "confusion.png",
                       title=f"{Path(cfg.data).name}: accuracy {report['accuracy']:.3f}")
        plot_accuracy_vs_shift(shifts, report["shift_robustness"]["accuracy"],
                               tmp / "shift_accuracy.png", box)
        plot_accuracy_vs_angle(angles, report["rotation_robustness"]["accuracy"],
                               tmp / "rotation_accuracy.png")
        write_json(tmp / "run.json", run_metadata(to_plain(cfg)))
    return EvaluateResult(out_dir=out, report=report)
