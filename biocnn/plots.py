"""Figures shared by the commands (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from biocnn.atomic import atomic_path  # noqa: E402

__all__ = [
    "save_figure",
    "plot_curves",
    "plot_confusion",
    "show_image",
    "plot_heatmap_gallery",
    "plot_accuracy_vs_shift",
    "plot_accuracy_vs_angle",
]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Atomically save a matplotlib figure (format from the suffix of ``path``) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def show_image(ax: Any, image: np.ndarray, title: str = "", color: str = "black") -> None:
    """Draw a 2D image ``(H, W)`` in grey without axes, with an optional coloured title."""
    ax.imshow(image, cmap="gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, color=color)


def plot_curves(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (train and, where present, validation)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if history and f"val_{key}" in history[0]:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if key == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_confusion(
    conf: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Confusion matrix ``(K, K)`` (rows = true class) as a row-normalised heat map with counts."""
    k = len(class_names)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.55 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_heatmap_gallery(
    images: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike,
    cols: int = 8,
    alpha: float = 0.45,
) -> Path:
    """A grid of grey images ``(n, H, W)`` with heat maps ``(n, H, W)`` in [0, 1] overlaid.

    Used for class-activation maps; each panel is titled by ``titles[i]``.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, image, heat, title in zip(axes.ravel(), images, heatmaps, titles, strict=False):
        show_image(ax, image, title)
        ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
    return save_figure(fig, path)


def _accuracy_plot(xs: Sequence[float], accuracy: Sequence[float], xlabel: str) -> tuple:
    """A figure of accuracy (0-1) against ``xs``."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(list(xs), list(accuracy), "o-")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_accuracy_vs_angle(
    angles: Sequence[float], accuracy: Sequence[float], path: str | os.PathLike
) -> Path:
    """Accuracy against in-plane rotation angle in degrees."""
    fig, _ = _accuracy_plot(angles, accuracy, "rotation (degrees)")
    return save_figure(fig, path)


def plot_accuracy_vs_shift(
    shifts: Sequence[float], accuracy: Sequence[float], path: str | os.PathLike, box: int = 0
) -> Path:
    """Accuracy against shift length in pixels (top axis: fraction of the ``box`` if given)."""
    fig, ax = _accuracy_plot(shifts, accuracy, "shift (px)")
    if box:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / box, lambda f: f * box))
        top.set_xlabel("shift / box")
    return save_figure(fig, path)
