"""What commands print and summarise: rich tables, JSON-ready summaries, input layouts.

No command logic lives here: :mod:`biocnn.tasks` compute, this module presents. Used by
``train`` (:func:`class_table`), ``evaluate`` (:func:`evaluate_tables`) and ``predict``
(:func:`prediction_tables`, :func:`prediction_json`, :func:`input_aggregates`,
:func:`layout_lines`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from biocnn.io.mrc import inspect_mrc

if TYPE_CHECKING:
    from biocnn.data.inputs import Inputs

__all__ = [
    "SHOW_IMAGES",
    "SHOW_FILES",
    "class_table",
    "confusion_table",
    "evaluate_tables",
    "input_aggregates",
    "layout_lines",
    "prediction_json",
    "prediction_tables",
    "short_name",
]

#: Largest number of images listed one by one in the terminal.
SHOW_IMAGES = 50
#: Largest number of input files whose layout is printed one line each.
SHOW_FILES = 10


def class_table(summary: dict[str, Any], title: str = "") -> Table:
    """Per-class precision / recall / F1 / support of a
    :func:`~biocnn.metrics.classification_summary`, with the accuracy as footer."""
    table = Table(title=title or None, show_footer=True)
    table.add_column("class", footer="accuracy")
    for col in ("precision", "recall", "F1"):
        table.add_column(col, justify="right")
    table.add_column("images", justify="right", footer=f"{summary['accuracy']:.4f}")
    for name, row in summary["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    return table


def confusion_table(conf: Sequence[Sequence[int]], names: Sequence[str]) -> Table:
    """Confusion matrix, rows true and columns predicted classes."""
    table = Table(title="confusion (rows: true, columns: predicted)")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, conf, strict=True):
        table.add_row(name, *map(str, row))
    return table


def evaluate_tables(report: dict[str, Any]) -> list[Table]:
    """Rich tables of an ``evaluation.json`` report: per class, confusion, accuracy against
    shift."""
    s = report["shift_robustness"]
    shift = Table(title=f"shift robustness ({s['fill']} fill, random directions)", show_footer=True)
    shift.add_column("shift (px)", footer="worst case")
    shift.add_column("shift / box", justify="right")
    shift.add_column("accuracy", justify="right", footer=f"{s['worst_case']:.4f}")
    for px, frac, acc in zip(s["shifts_px"], s["shifts_fraction_of_box"], s["accuracy"], strict=True):
        shift.add_row(f"{px:g}", f"{frac:.3f}", f"{acc:.4f}")
    shift.caption = (f"consistency (two random shifts <= {s['consistency_max_shift_px']} px): "
                     f"{s['consistency']:.4f}; sub-pixel (two random shifts < 1 px, Fourier): "
                     f"{s.get('subpixel_consistency', float('nan')):.4f} (bilinear: "
                     f"{s.get('subpixel_consistency_bilinear', float('nan')):.4f}); worst case = correct "
                     "at every shift")
    title = (f"{report['data']}: {report['images']} images, loss {report['loss']:.4f}"
             + (", TTA" if report["tta"] else ""))
    tables = [class_table(report, title), confusion_table(report["confusion"], report["class_names"]),
              shift]
    r = report.get("rotation_robustness")
    if r:
        how = f"{r['fill']} fill, {r.get('interpolation', 'bilinear')}"
        rot = Table(title=f"rotation robustness ({how})", show_footer=True)
        rot.add_column("angle (°)", footer="worst case")
        rot.add_column("accuracy", justify="right", footer=f"{r['worst_case']:.4f}")
        for angle, acc in zip(r["angles_deg"], r["accuracy"], strict=True):
            rot.add_row(f"{angle:g}", f"{acc:.4f}")
        rot.caption = (f"consistency (two random rotations): {r['consistency']:.4f}"
                       + (f" (bilinear: {r['consistency_bilinear']:.4f})"
                          if "consistency_bilinear" in r else ""))
        tables.append(rot)
    return tables


def short_name(name: str) -> str:
    """``000012@/long/path/stack.mrcs`` -> ``000012@stack.mrcs``; paths -> file names."""
    section, at, rest = name.partition("@")
    return f"{section}@{Path(rest).name}" if at else Path(name).name


def layout_lines(inputs: Inputs) -> list[str]:
    """How each input file is read, one line per file (``a.mrc: stack of 7 images (space group
    1 with a particle-like 7x64x64 shape)``), or one summary line beyond :data:`SHOW_FILES`."""
    lines: list[str] = []
    mrc_files: list[tuple[str, str]] = []
    for src in inputs.sources:
        index = src.dataset.index
        if src.path is not None:
            lines.append(f"{src.path}: {len(src)} particle(s) in {len(index.files)} file(s), "
                         "each read as a stack")
            continue
        for f, layout in zip(index.files, index.layouts, strict=True):
            mrc_files.append((f, layout))
    if len(mrc_files) > SHOW_FILES:
        counts = Counter(layout for _, layout in mrc_files)
        lines.append(f"{len(mrc_files)} MRC files: "
                     + ", ".join(f"{n} {layout}{'s' if n > 1 else ''}" for layout, n in counts.items()))
        return lines
    for f, layout in mrc_files:
        info = inspect_mrc(f)  # the layout rule's own guess and reason
        n, h, w = info.shape
        what = {"image": "one image", "stack": f"stack of {n} images",
                "volume": f"volume of {n}x{h}x{w}"}[layout]
        reason = "" if layout == "image" else info.reason if info.layout == layout else f"--{layout}"
        lines.append(f"{f}: {what}" + (f" ({reason})" if reason else ""))
    return lines


def input_aggregates(inputs: Inputs, probs: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per input file (a STAR or ``.cs`` file counts as one): images, mean probabilities, the
    class of the mean (the aggregate prediction, e.g. over the slices of a volume) and counts
    of per-image predictions."""
    rows = []
    k = len(names)
    for src in inputs.sources:
        index = src.dataset.index
        p = probs[src.offset : src.offset + len(index)]
        if src.path is not None:
            groups = np.zeros(len(index), np.int64)
            labels, layouts = [str(src.path)], [src.kind]
        else:
            groups, labels, layouts = index.file_id.astype(np.int64), list(index.files), list(index.layouts)
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


def prediction_json(result: Any) -> dict[str, Any]:
    """A JSON-ready summary of a ``PredictResult``: class counts and, per input file, the
    aggregate prediction (for a single image: its class and probabilities)."""
    names = result.class_names
    counts = np.bincount(result.predicted, minlength=len(names))
    return {
        "model": result.model,
        "class_names": names,
        "tta": result.tta,
        "images": int(len(result.probabilities)),
        "counts": dict(zip(names, counts.tolist(), strict=True)),
        "inputs": result.aggregates,
        "selected": result.selected,
        "written": [str(p) for p in result.written],
    }


def prediction_tables(result: Any) -> list[Table]:
    """Rich tables of a ``PredictResult``: every image (up to :data:`SHOW_IMAGES`) or class
    counts, and the aggregate of each input with more than one image."""
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
            table.add_row(short_name(result.inputs.name(i)), names[int(probs[i].argmax())],
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
    multi = [r for r in result.aggregates if r["images"] > 1]
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
