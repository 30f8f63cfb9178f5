"""``biocnn select``: score 2D class averages with a good/junk model and keep the good ones.

Inputs (:func:`resolve_classes`):

* an MRC stack of class averages (any software; always read as a stack);
* a RELION 2D job: the job folder (its last iteration), or a ``run_itNNN_model.star``; the
  averages are ``run_itNNN_classes.mrcs``, the per-class values of ``data_model_classes``
  (``rlnClassDistribution``, ``rlnEstimatedResolution``, ...) go to ``classes.csv``, and the
  particles of ``run_itNNN_data.star`` (``rlnClassNumber``) give the counts and
  ``particles.star``;
* cryoSPARC class averages: the ``.cs`` file (its ``blob/path`` names the ``.mrc`` stack; an
  ``.mrc`` given beside it is not read twice).

Per class, ``P(good) = softmax(logits / T)[good]`` with the checkpoint's ``temperature``
``T`` (1 when absent); a class is kept when ``P(good) >= threshold`` (``--threshold``, else
the checkpoint's ``threshold``, else 0.5). Outputs, in a new folder ``--out`` (built
aside and moved in place only when complete): ``good.mrcs`` / ``bad.mrcs`` (original
pixels; a side with no class is not written), ``classes.csv``, ``selection.json``,
``particles.star`` (RELION input: the particle rows of the kept classes, every column
unchanged, RELION 3.1+ optics) and ``report.html`` (:mod:`biocnn.html_report`).

Out-of-distribution checks (:func:`ood_reasons`), on the images as the model sees them
(resampled, not yet standardised), inside vs outside the model's mask circle:

* ``busy background``: background std > 0.6 x the std inside (raw particles, micrographs:
  class averages are flat outside the particle; measured on ``biocnn simulate``: 0 of 100
  good class averages, 8 of 100 junk ones (the noise-only classes), 120 of 120 particles);
* ``offset background``: |background mean| > 2 x the std inside (raw detector counts);
* ``inverted contrast``: skewness of the pixels inside < -0.5 (protein dark: a white
  particle on a dark, flat surround gives a long bright tail; 0 of 100 simulated good
  class averages are below, their 5th percentile is +0.9);
* ``pixel size``: input pixel size more than 2x away from the model's.

Junk classes trip some of these by nature (a noise-only class has a busy background), so
each class only carries its reasons in ``classes.csv``; the one-line warning is for the
input, when a reason holds for at least half of the classes (pixel size: for any).

Example
-------
    >>> run_select(SelectConfig(inputs=("Class2D/job010",), model="best.pt",
    ...                         out="Select/auto"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from biocnn.atomic import atomic_dir, write_json
from biocnn.checkpoint import Classifier, load_classifier
from biocnn.config import SelectConfig
from biocnn.data.inputs import Inputs, batch_for, expand_inputs, forward_bytes, input_kind, open_inputs
from biocnn.data.preprocess import circular_mask
from biocnn.engine import predict_logits
from biocnn.errors import BiocnnError, OptionError
from biocnn.html_report import ClassRow, write_html_report
from biocnn.io.relion import complete_optics
from biocnn.io.star import parse_image_name, read_star, read_star_blocks, write_star
from biocnn.tasks.predict import write_selection

__all__ = [
    "SelectConfig",
    "SelectResult",
    "ClassSet",
    "OOD_LIMITS",
    "run_select",
    "resolve_classes",
    "find_relion_model",
    "read_relion_classes",
    "good_probability",
    "ood_reasons",
    "input_warnings",
]

#: Limits of the out-of-distribution checks (see the module docstring).
OOD_LIMITS = {"busy": 0.6, "offset": 2.0, "skew": -0.5, "apix_ratio": 2.0, "share": 0.5}


@dataclass
class ClassSet:
    """The class averages of an input and what is known about them.

    ``info`` has one row per class in image order (RELION: the ``data_model_classes``
    columns); ``counts`` the particles per class when known.
    """

    images: list[str]
    kind: str  # "mrc", "relion" or "cs"
    apix: float | None = None
    info: pd.DataFrame | None = None
    counts: np.ndarray | None = None
    model_star: Path | None = None
    data_star: Path | None = None
    image_size: int | None = None  # RELION: rlnOriginalImageSize of the particles


@dataclass
class SelectResult:
    """Scores and selection of every class."""

    scores: np.ndarray  # (N,) P(good)
    selected: np.ndarray  # (N,) bool
    names: list[str]
    counts: np.ndarray | None
    threshold: float
    temperature: float
    reasons: list[list[str]]  # per class, out-of-distribution reasons
    warnings: list[str]
    out: Path
    written: list[Path] = field(default_factory=list)
    particles_kept: int | None = None


_ITER = re.compile(r"_it(\d+)_model\.star$")


def find_relion_model(path: str | Path) -> Path | None:
    """The ``_model.star`` of a RELION 2D input: the file itself, the one beside a
    ``_classes.mrcs``, or the last iteration's in a job folder; None otherwise."""
    p = Path(path)
    if p.is_file() and p.name.endswith("_model.star"):
        return p
    if p.is_file() and p.name.endswith("_classes.mrcs"):  # the stack of a RELION iteration
        model = p.with_name(p.name[: -len("_classes.mrcs")] + "_model.star")
        return model if model.is_file() else None
    if p.is_dir():
        found = [(int(m.group(1)), f) for f in p.glob("*_model.star") if (m := _ITER.search(f.name))]
        if found:
            return max(found)[1]
    return None


def _sibling(model_star: Path, suffix: str) -> Path:
    """``run_it025_model.star`` -> ``run_it025<suffix>`` in the same folder."""
    return model_star.with_name(model_star.name[: -len("_model.star")] + suffix)


def _blocks(path: Path) -> dict[str, pd.DataFrame]:
    """``data_model_general`` (one row) and ``data_model_classes`` of a ``_model.star``.

    biocnn's own STAR scanner parses only these two blocks (starfile would parse all of
    them: 1.3 s for the ~400 spectral tables of a 200-class job, against 0.02 s).
    """
    return read_star_blocks(path, ("model_general", "model_classes"))


def read_relion_classes(model_star: Path) -> ClassSet:
    """The class averages of a RELION 2D ``_model.star``: stack, per-class values, pixel size,
    and particle counts from the ``_data.star`` beside it (when present)."""
    blocks = _blocks(model_star)
    classes = blocks.get("model_classes")
    if not isinstance(classes, pd.DataFrame) or "rlnReferenceImage" not in classes.columns:
        raise BiocnnError(f"{model_star}: no data_model_classes table with rlnReferenceImage")
    general = blocks.get("model_general")
    general = general.iloc[0].to_dict() if general is not None and len(general) else {}
    stack = _sibling(model_star, "_classes.mrcs")
    if not stack.is_file():  # names are relative to the project folder: try them, then beside
        _, ref = parse_image_name(str(classes["rlnReferenceImage"].iloc[0]), model_star)
        candidates = [Path(ref), model_star.parent / Path(ref).name,
                      *(parent / ref for parent in model_star.resolve().parents)]
        stack = next((c for c in candidates if c.is_file()), stack)
        if not stack.is_file():
            raise BiocnnError(f"{model_star}: class averages {ref} not found")
    sections = [parse_image_name(str(n), model_star)[0] for n in classes["rlnReferenceImage"]]
    if sections != list(range(len(sections))):  # 0-based sections
        raise BiocnnError(f"{model_star}: rlnReferenceImage is not 1..{len(sections)} in order")
    info = classes.drop(columns=["rlnReferenceImage"]).reset_index(drop=True)
    apix = general.get("rlnPixelSize")
    size = general.get("rlnOriginalImageSize")
    data_star = _sibling(model_star, "_data.star")
    counts = None
    if data_star.is_file():
        numbers = read_star(data_star).column("rlnClassNumber").astype(int).to_numpy()
        counts = np.bincount(numbers, minlength=len(classes) + 1)[1 : len(classes) + 1]
    else:
        data_star = None
    return ClassSet([str(stack)], "relion", float(apix) if apix else None, info, counts,
                    model_star, data_star, int(size) if size else None)


def resolve_classes(inputs: Sequence[str]) -> ClassSet:
    """What the user typed -> :class:`ClassSet` (RELION job, cryoSPARC ``.cs``, MRC stacks)."""
    if not inputs:
        raise BiocnnError("select: no input")
    relion = [m for m in map(find_relion_model, inputs) if m is not None]
    if relion:
        if len(inputs) != 1:
            raise BiocnnError("select: give one RELION job (folder or _model.star) at a time")
        return read_relion_classes(relion[0])
    for pattern in inputs:
        if Path(pattern).is_dir() and any(Path(pattern).glob("*_classes.mrcs")):
            raise BiocnnError(f"{pattern}: RELION classes without a *_itNNN_model.star")
    files = expand_inputs(inputs)
    kinds = [input_kind(f) for f in files]
    if "star" in kinds:
        raise BiocnnError("select: a particle STAR file is not class averages; give the RELION "
                          "job folder or its _model.star")
    if "cs" in kinds:  # the .mrc beside a .cs is what its blob/path names: read it once
        return ClassSet([str(f) for f, k in zip(files, kinds, strict=True) if k == "cs"], "cs")
    return ClassSet([str(f) for f in files], "mrc")


def _checkpoint_number(meta: dict[str, Any], key: str, default: float, ok: Callable[[float], bool],
                       what: str) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not ok(float(value)):
        raise BiocnnError(f"checkpoint {key} {value!r}: must be {what}")
    return float(value)


def good_probability(logits: torch.Tensor, good: int, temperature: float = 1.0) -> np.ndarray:
    """``(N, K)`` logits -> ``(N,)`` float64 ``softmax(logits / temperature)[:, good]``."""
    return (logits.double() / temperature).softmax(1)[:, good].numpy()


def ood_reasons(images: torch.Tensor, background: torch.Tensor, apix: np.ndarray | None = None,
                model_apix: float = 0.0) -> list[list[str]]:
    """Out-of-distribution reasons of each image (see the module docstring).

    Parameters
    ----------
    images
        ``(N, 1, box, box)`` or ``(N, box, box)`` resampled, unstandardised images.
    background
        ``(box, box)`` bool, True outside the mask (the model's standardisation background).
    apix, model_apix
        Input pixel sizes ``(N,)`` and the model's (0 or unknown: not checked).
    """
    x = images.reshape(len(images), -1).double()
    bg = background.reshape(-1).to(x.device)
    inside, outside = x[:, ~bg], x[:, bg]
    s_in = inside.std(1, unbiased=False).clamp_min(1e-12)
    s_bg, m_bg = outside.std(1, unbiased=False), outside.mean(1)
    m_in = inside.mean(1, keepdim=True)
    skew = ((inside - m_in) / s_in[:, None]).pow(3).mean(1)
    lim = OOD_LIMITS
    out: list[list[str]] = []
    for i in range(len(x)):
        r = []
        if s_bg[i] > lim["busy"] * s_in[i]:
            r.append("busy background")
        if m_bg[i].abs() > lim["offset"] * s_in[i]:
            r.append("offset background")
        if skew[i] < lim["skew"]:
            r.append("inverted contrast")
        if apix is not None and model_apix > 0 and apix[i] > 0 and \
                max(apix[i] / model_apix, model_apix / apix[i]) > lim["apix_ratio"]:
            r.append("pixel size")
        out.append(r)
    return out


_HINTS = {
    "busy background": "background as busy as the centre (raw particles or micrographs?)",
    "offset background": "background far from zero (raw counts, not class averages?)",
    "inverted contrast": "protein darker than the background (inverted contrast?)",
    "pixel size": "pixel size more than 2x away from the model's",
}


def input_warnings(reasons: Sequence[Sequence[str]], model_apix: float = 0.0,
                   apix: np.ndarray | None = None) -> list[str]:
    """One line per reason that holds for at least half the classes (pixel size: any);
    ``apix`` ``(N,)`` the input pixel sizes, for the message."""
    n = max(len(reasons), 1)
    lines = []
    for reason, hint in _HINTS.items():
        k = sum(reason in r for r in reasons)
        if k and (reason == "pixel size" or k / n >= OOD_LIMITS["share"]):
            extra = ""
            if reason == "pixel size":
                far = [a for a, r in zip(apix if apix is not None else [], reasons, strict=False)
                       if reason in r]
                extra = (f" ({model_apix:g} Å" + (f"; input median {np.median(far):.3g} Å)"
                                                    if far else ")"))
            lines.append(f"{k} of {len(reasons)} images unlike class averages: {hint}{extra}; "
                         "their scores are not reliable")
    return lines


#: The selector shipped inside the package (``examples/train_selector.sh`` regenerates it).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "weights" / "class_selector.pt"


def _check(cfg: SelectConfig) -> None:
    if not cfg.model:
        raise OptionError("model", None, "none given and this biocnn has no shipped selector "
                          f"({SHIPPED_MODEL} is missing)")
    if not cfg.out:
        raise OptionError("out", None, "an output folder is required")
    if cfg.threshold is not None and not (math.isfinite(cfg.threshold) and 0 <= cfg.threshold <= 1):
        raise OptionError("threshold", cfg.threshold, "must be in [0, 1]")
    if cfg.apix is not None and not (math.isfinite(cfg.apix) and cfg.apix > 0):
        raise OptionError("apix", cfg.apix, "must be > 0")
    if cfg.batch_size < 1:
        raise OptionError("batch_size", cfg.batch_size, "must be >= 1")


def _check_out(out: Path, read: Sequence[Path], overwrite: bool) -> None:
    """Refuse an existing output folder (unless ``overwrite``) and one holding an input:
    replacing it would delete the input."""
    if out.exists() and not out.is_dir():
        raise OptionError("out", out, "exists and is not a folder")
    root = out.resolve()
    for f in read:
        if root == f.resolve() or root in f.resolve().parents:
            raise OptionError("out", out, f"holds the input {f}; choose another folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OptionError("out", out, "exists", fix="overwrite")


def run_select(cfg: SelectConfig, log: Callable[[str], None] = print) -> SelectResult:
    """Score every class average of ``cfg.inputs`` and write the selection into ``cfg.out``.

    Raises
    ------
    BiocnnError
        Bad option, checkpoint or input, a model without the good class, or an output folder
        that exists (without ``overwrite``) or holds an input; checked before any work.
    """
    if not cfg.model and SHIPPED_MODEL.is_file():
        cfg = dataclasses.replace(cfg, model=str(SHIPPED_MODEL))
    _check(cfg)
    out = Path(cfg.out)
    classes = resolve_classes(cfg.inputs)
    extra = [p for p in (classes.model_star, classes.data_star) if p is not None]
    _check_out(out, [Path(cfg.model), *map(Path, classes.images), *extra], cfg.overwrite)
    clf = load_classifier(cfg.model, cfg.device)
    if cfg.good_class not in clf.class_names:
        raise OptionError("good_class", repr(cfg.good_class), f"not a class of {cfg.model} "
                          f"({', '.join(clf.class_names)})")
    good = clf.class_names.index(cfg.good_class)
    temperature = _checkpoint_number(clf.meta, "temperature", 1.0, lambda t: t > 0, "> 0")
    threshold = cfg.threshold if cfg.threshold is not None else _checkpoint_number(
        clf.meta, "threshold", 0.5, lambda t: 0 <= t <= 1, "in [0, 1]")
    views = dataclasses.replace(clf.views, as_volume=False)  # class averages are always a stack
    inputs = open_inputs(classes.images, preprocess=clf.preprocess, views=views,
                         apix=cfg.apix or classes.apix, cs_project=cfg.cs_project)
    _check_out(out, [*inputs.files(), *extra], cfg.overwrite)
    shapes = sorted({tuple(sh) for s in inputs.sources for sh in s.dataset.source_shapes})
    if len(shapes) > 1:  # good.mrcs / bad.mrcs hold the original pixels: one size per stack
        raise BiocnnError("the inputs hold class averages of different sizes ("
                          + ", ".join(f"{h}x{w}" for h, w in shapes) + "); select them separately")
    n = len(inputs)
    if classes.counts is not None and len(classes.counts) != n:
        raise BiocnnError(f"{classes.model_star}: {len(classes.counts)} classes but {n} images")
    log(f"scoring {n} class average(s) with {clf.path} (P({cfg.good_class}), T={temperature:g}, "
        f"threshold {threshold:g})")
    scores, thumbs, reasons = _score(clf, inputs, good, temperature, cfg)
    apix = np.concatenate([s.dataset.index.apix for s in inputs.sources])
    notes = input_warnings(reasons, float(clf.preprocess.apix or 0), apix)
    for line in notes:
        warnings.warn(line, stacklevel=2)
    selected = scores >= threshold
    names = [inputs.name(i) for i in range(n)]
    result = SelectResult(scores, selected, names, classes.counts, threshold, temperature, reasons,
                          notes, out)
    with atomic_dir(out, overwrite=cfg.overwrite, marker="selection.json") as tmp:
        written = _write_outputs(tmp, result, inputs, classes, thumbs, cfg)
    result.written = [out / p.name for p in written]
    return result


def _score(clf: Classifier, inputs: Inputs, good: int, temperature: float, cfg: SelectConfig
           ) -> tuple[np.ndarray, list[np.ndarray], list[list[str]]]:
    """P(good), model-box thumbnails ``(box, box)`` and OOD reasons of every image."""
    model_bytes = forward_bytes(clf.model, clf.box, clf.device)
    scores, thumbs, reasons = [], [], []
    # the particle mask, whatever pixels the model standardises with
    background = ~circular_mask(clf.box, clf.preprocess.mask_radius_px(clf.box))
    for s in inputs.sources:
        data = s.dataset
        batch = batch_for(data, cfg.batch_size, model_bytes=model_bytes)
        logits = predict_logits(clf.model, data, device=clf.device, batch_size=batch,
                                progress=cfg.progress, standardize=clf.standardize)
        scores.append(good_probability(logits, good, temperature))
        for start in range(0, len(data), batch):
            x, _ = data.batch(np.arange(start, min(start + batch, len(data))))
            reasons += ood_reasons(x, background, data.index.apix[start : start + len(x)],
                                   float(clf.preprocess.apix or 0))
            thumbs += list(x[:, 0].numpy())
    return np.concatenate(scores), thumbs, reasons


def _table(result: SelectResult, classes: ClassSet) -> pd.DataFrame:
    table = pd.DataFrame({
        "class": np.arange(1, len(result.scores) + 1),
        "image": result.names,
        "p_good": np.round(result.scores, 6),
        "selected": result.selected.astype(int),
        "particles": (pd.array(result.counts, dtype="Int64") if result.counts is not None
                      else pd.array([None] * len(result.scores), dtype="Int64")),
        "ood": [";".join(r) for r in result.reasons],
    })
    if classes.info is not None:
        table = pd.concat([table, classes.info.reset_index(drop=True)], axis=1)
    return table


def _particles_star(path: Path, classes: ClassSet, keep: np.ndarray) -> tuple[Path, int]:
    """The particle rows of ``_data.star`` whose ``rlnClassNumber`` is a kept class (1-based
    numbers ``keep``), every column unchanged, with a complete RELION 3.1+ optics table."""
    assert classes.data_star is not None
    star = read_star(classes.data_star)
    numbers = star.column("rlnClassNumber").astype(int).to_numpy()
    rows = star.particles[np.isin(numbers, keep)].reset_index(drop=True)
    n = len(rows)
    apix = np.full(n, classes.apix or 0.0)
    size = np.full(n, classes.image_size or 0)
    rows, optics, defaulted = complete_optics(rows, star.optics, apix, size)
    if defaulted:
        warnings.warn(f"{', '.join(defaulted)} not recorded in {classes.data_star}: written as "
                      "300 kV / 2.7 mm / 0.1 in particles.star", stacklevel=3)
    return write_star(path, rows, optics), n


def _write_outputs(tmp: Path, result: SelectResult, inputs: Inputs, classes: ClassSet,
                   thumbs: list[np.ndarray], cfg: SelectConfig) -> list[Path]:
    written = []
    for name, mask in (("good.mrcs", result.selected), ("bad.mrcs", ~result.selected)):
        rows = np.flatnonzero(mask)
        if len(rows):
            written.append(write_selection(tmp / name, inputs, rows))
    table = _table(result, classes)
    table.to_csv(tmp / "classes.csv", index=False)
    written.append(tmp / "classes.csv")
    if classes.data_star is not None:
        path, result.particles_kept = _particles_star(
            tmp / "particles.star", classes, np.flatnonzero(result.selected) + 1)
        written.append(path)
    counts = result.counts
    summary = {
        "model": str(cfg.model), "inputs": list(cfg.inputs), "input_kind": classes.kind,
        "good_class": cfg.good_class, "temperature": result.temperature,
        "threshold": result.threshold, "classes": len(result.scores),
        "kept": int(result.selected.sum()), "rejected": int((~result.selected).sum()),
        "particles_total": None if counts is None else int(counts.sum()),
        "particles_kept": None if counts is None else int(counts[result.selected].sum()),
        "warnings": result.warnings,
    }
    rows = [ClassRow(i + 1, result.names[i], float(result.scores[i]), bool(result.selected[i]),
                     None if counts is None else int(counts[i]), thumbs[i],
                     ", ".join(result.reasons[i]))
            for i in range(len(result.scores))]
    shown = {k: summary[k] for k in ("model", "input_kind", "particles_total", "particles_kept")
             if summary[k] is not None}
    written.append(write_html_report(tmp / "report.html", rows, result.threshold,
                                     title=f"biocnn select: {', '.join(cfg.inputs)}",
                                     notes=result.warnings, summary=shown))
    records = table[["class", "image", "p_good", "selected", "particles", "ood"]].astype(object)
    summary["per_class"] = records.where(records.notna(), None).to_dict(orient="records")
    summary["files"] = sorted(p.name for p in written) + ["selection.json"]
    written.append(write_json(tmp / "selection.json", summary))
    return written
