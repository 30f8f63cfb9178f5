"""The baseline's outputs: rich tables, ``report.png`` (shift view: accuracy chart + corner digits)
and ``rotation.png`` (rotation view: accuracy vs angle + rotated digits)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mnist_baseline.rotations import D4_ELEMENTS
from mnist_baseline.shifts import CORNERS

__all__ = ["results_table", "rotation_table", "angle_table", "plot_report", "plot_rotation"]

D4_SHORT = {"identity": "id", "rot90": "r90", "rot180": "r180", "rot270": "r270", "flip": "f",
            "flip_rot90": "f r90", "flip_rot180": "f r180", "flip_rot270": "f r270"}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _model_label(name: str, row: dict[str, Any]) -> str:
    return name + (" (aug)" if row["augment"] and not name.endswith("_aug") else "")


def results_table(results: dict[str, Any]) -> Table:
    """One row per model: centred, each corner, worst corner, all-shift mean / worst-case,
    consistency and training time (accuracies in %). Models without the shift view show ``-``."""
    table = Table(
        title=f"MNIST, trained centred, tested shifted (canvas {results['canvas']}; all-shift on "
        f"{results.get('all_shift_digits', '?')} digits, {results.get('all_shift_placements', '?'):,}"
        " placements)",
    )
    for col in ("model", "centred", "TL", "TR", "BL", "BR", "worst corner", "all-shift mean",
                "all-shift worst", "consist.", "circ. consist.", "train s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.caption = ("accuracy in %; TL/TR/BL/BR: bounding box moved to each corner; all-shift worst: "
                     "digits right at every placement; consist.: same label for two random placements")
    for name, r in results["models"].items():
        if "corners" not in r:
            table.add_row(_model_label(name, r), _pct(r["centered"]), *["-"] * 9,
                          f"{r['train_seconds']:.0f}")
            continue
        table.add_row(
            _model_label(name, r),
            _pct(r["centered"]), *(_pct(r["corners"][c]) for c in CORNERS), _pct(r["worst_corner"]),
            _pct(r["all_shift_mean"]), _pct(r["all_shift_worst_case"]), _pct(r["consistency"]),
            _pct(r["circular_consistency"]), f"{r['train_seconds']:.0f}",
        )
    return table


def rotation_table(results: dict[str, Any]) -> Table:
    """One row per model with a rotation view: centred, each D4 element, D4 worst-case, mean and
    worst-case over the angle curve and consistency under two random angles (in %)."""
    rows = {k: r for k, r in results["models"].items() if "rotation" in r}
    table = Table(
        title=f"MNIST, trained centred, tested rotated (canvas {results['canvas']}; D4 on "
        f"{results['test_images']:,} digits, angles on {results.get('rotation_digits', '?')} digits)",
    )
    for col in ("model", "centred", *(D4_SHORT[e] for e in D4_ELEMENTS), "D4 worst", "angle mean",
                "angle worst", "rot. consist."):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.caption = ("accuracy in %; r90..r270: rotated 90/180/270° counter-clockwise, f: mirrored (then "
                     "rotated); D4 / angle worst: digits right under every element / every angle of the "
                     "curve (bilinear, each digit kept whole); rot. consist.: same label at two random "
                     "angles")
    for name, r in rows.items():
        rot = r["rotation"]
        table.add_row(
            _model_label(name, r), _pct(r["centered"]), *(_pct(rot["d4"][e]) for e in D4_ELEMENTS),
            _pct(rot["d4_worst_case"]), _pct(rot["angle_mean"]), _pct(rot["angle_worst_case"]),
            _pct(rot["consistency"]),
        )
    return table


def angle_table(results: dict[str, Any]) -> Table:
    """The rotation curve: one row per angle, one column per model with a rotation view (in %)."""
    rows = {k: r for k, r in results["models"].items() if "rotation" in r}
    angles = next(iter(rows.values()))["rotation"]["angles"] if rows else []
    table = Table(title=f"accuracy (%) vs angle, {results.get('rotation_digits', '?')} digits")
    table.add_column("angle", justify="right")
    for name, r in rows.items():
        table.add_column(_model_label(name, r), justify="right")
    for i, angle in enumerate(angles):
        table.add_row(f"{angle:g}°", *(_pct(r["rotation"]["angle_accuracy"][i]) for r in rows.values()))
    return table


def plot_report(
    results: dict[str, Any],
    digits: dict[str, np.ndarray],
    predictions: dict[str, dict[str, np.ndarray]],
    labels: np.ndarray,
    path: str | os.PathLike,
) -> Path:
    """Accuracy chart (left) and a grid of corner digits with each model's prediction (right).

    Parameters
    ----------
    digits
        Corner name → images ``(n, S, S)`` of the same ``n`` test digits.
    predictions
        Model name → corner name → predicted labels ``(n,)``.
    labels
        True labels ``(n,)``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    from biocnn.plots import save_figure, show_image

    models = list(results["models"])
    metrics = [("centered", "centred"), ("worst_corner", "worst corner"),
               ("all_shift_mean", "all-shift mean"), ("all_shift_worst_case", "all-shift worst")]
    n = len(labels)
    fig = plt.figure(figsize=(6 + 1.3 * len(CORNERS), max(4.0, 0.9 * n + 1)))
    grid = GridSpec(n, 1 + len(CORNERS), figure=fig, width_ratios=[4.5] + [1] * len(CORNERS))
    ax = fig.add_subplot(grid[:, 0])
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        vals = [100 * results["models"][m][key] for m in models]
        bars = ax.bar(np.arange(len(models)) + (i - (len(metrics) - 1) / 2) * width, vals, width,
                      label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=6)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(metrics))
    ax.set_title("trained on centred digits")
    for r in range(n):
        for c, corner in enumerate(CORNERS):
            preds = " ".join(str(int(predictions[m][corner][r])) for m in models)
            ok = all(predictions[m][corner][r] == labels[r] for m in models)
            title = f"{corner.replace('_', ' ')}\n{preds}" if r == 0 else preds
            show_image(fig.add_subplot(grid[r, 1 + c]), digits[corner][r],
                       title, "green" if ok else "red")
    fig.suptitle(f"predictions per corner, models in order: {', '.join(models)}", fontsize=8)
    return save_figure(fig, path)


def plot_rotation(
    results: dict[str, Any],
    digits: np.ndarray,
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    path: str | os.PathLike,
) -> Path:
    """Accuracy vs rotation angle per model (top) and the rotated digits with each model's prediction.

    Parameters
    ----------
    results
        The ``results.json`` document; models with a ``rotation`` entry are drawn.
    digits
        ``(n, A, S, S)``: ``n`` test digits at each of the ``A`` angles of the curve.
    predictions
        Model name → predicted labels ``(n, A)``.
    labels
        True labels ``(n,)``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    from biocnn.plots import save_figure, show_image

    models = [m for m, r in results["models"].items() if "rotation" in r]
    n, n_angles = digits.shape[:2]
    fig = plt.figure(figsize=(max(8.0, 0.8 * n_angles), 4.6 + 0.9 * n))
    # row 1 is an empty spacer, so the curve's axis label clears the digits' titles
    grid = GridSpec(2 + n, n_angles, figure=fig, height_ratios=[4, 0.6] + [1] * n)
    ax = fig.add_subplot(grid[0, :])
    for m in models:
        rot = results["models"][m]["rotation"]
        ax.plot(rot["angles"], [100 * v for v in rot["angle_accuracy"]], "o-", ms=3,
                label=f"{m} (consistency {100 * rot['consistency']:.1f}%)")
    ax.set_xlabel("rotation angle (degrees, counter-clockwise)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    angles = results["models"][models[0]]["rotation"]["angles"] if models else [None] * n_angles
    if models:
        ax.set_xticks(angles)
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    ax.set_title(f"trained on centred digits, tested rotated ({results.get('rotation_digits', '?')} digits)")
    for r in range(n):
        for a in range(n_angles):
            preds = " ".join(str(int(predictions[m][r, a])) for m in models)
            ok = all(predictions[m][r, a] == labels[r] for m in models)
            title = f"{angles[a]:g}°\n{preds}" if r == 0 and angles[a] is not None else preds
            show_image(fig.add_subplot(grid[2 + r, a]), digits[r, a], title, "green" if ok else "red")
    fig.suptitle(f"predictions per angle, models in order: {', '.join(models)}", fontsize=8)
    return save_figure(fig, path)
