"""The baseline's outputs: a rich table and ``report.png`` (accuracy chart + corner digits)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mnist_baseline.shifts import CORNERS

__all__ = ["results_table", "plot_report"]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def results_table(results: dict[str, Any]) -> Table:
    """One row per model: centred, each corner, worst corner, all-shift mean / worst-case,
    consistency and training time (accuracies in %)."""
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
        table.add_row(
            name + (" (aug)" if r["augment"] and not name.endswith("_aug") else ""),
            _pct(r["centered"]), *(_pct(r["corners"][c]) for c in CORNERS), _pct(r["worst_corner"]),
            _pct(r["all_shift_mean"]), _pct(r["all_shift_worst_case"]), _pct(r["consistency"]),
            _pct(r["circular_consistency"]), f"{r['train_seconds']:.0f}",
        )
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
