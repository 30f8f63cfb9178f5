"""Classification and shift-robustness metrics.

Shift robustness is summarised from a boolean matrix ``correct (N, P)``: image ``n``
classified correctly at placement ``p``. From it: accuracy per placement, mean accuracy
over placements, and worst-case accuracy (the fraction of images classified correctly at
*every* placement). Consistency follows Zhang (ICML 2019): how often two random shifts
of the same image receive the same prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "confusion_matrix",
    "precision_recall",
    "placement_summary",
    "agreement",
    "consistency",
    "circular_consistency",
    "rotated_correct",
    "transform_consistency",
    "classification_summary",
    "shifted_correct",
]

PredictFn = Callable[[Tensor], Tensor]


def _as_preds(logits_or_preds: Tensor | np.ndarray) -> np.ndarray:
    arr = np.asarray(logits_or_preds.detach().cpu() if isinstance(logits_or_preds, Tensor)
                     else logits_or_preds)
    return arr.argmax(1) if arr.ndim == 2 else arr


def accuracy(logits_or_preds: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Fraction correct; accepts logits ``(N, K)`` or predicted labels ``(N,)``."""
    preds, labels = _as_preds(logits_or_preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else float("nan")


def confusion_matrix(
    logits_or_preds: Tensor | np.ndarray, labels: Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts ``(K, K)``: row = true class, column = predicted class."""
    preds, labels = _as_preds(logits_or_preds), np.asarray(labels)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (labels, preds), 1)
    return conf


def precision_recall(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Per-class precision, recall, F1 and support from a confusion matrix ``(K, K)``."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(conf))]
    tp = np.diag(conf).astype(float)
    predicted, actual = conf.sum(0), conf.sum(1)
    out = {}
    for i, name in enumerate(names):
        p = tp[i] / predicted[i] if predicted[i] else 0.0
        r = tp[i] / actual[i] if actual[i] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": p, "recall": r, "f1": f1, "support": int(actual[i])}
    return out


def placement_summary(correct: np.ndarray) -> dict[str, float]:
    """Summarise ``correct (N, P)`` booleans over ``P`` placements of ``N`` images.

    Returns ``mean`` (accuracy averaged over all placements), ``worst_case`` (fraction of
    images correct at every placement) and ``worst_placement`` (accuracy of the worst single
    placement).
    """
    correct = np.asarray(correct, dtype=bool)
    return {
        "mean": float(correct.mean()),
        "worst_case": float(correct.all(axis=1).mean()),
        "worst_placement": float(correct.mean(axis=0).min()),
    }


def agreement(preds_a: Tensor | np.ndarray, preds_b: Tensor | np.ndarray) -> float:
    """Fraction of images given the same label in two views (logits or labels ``(N,)``)."""
    return float((_as_preds(preds_a) == _as_preds(preds_b)).mean())


@torch.no_grad()
def consistency(
    predict: PredictFn,
    images: Tensor,
    max_shift: int,
    generator: torch.Generator,
    fill: str = "zeros",
    batch_size: int = 512,
) -> float:
    """Zhang (2019) consistency: P(same prediction for two random shifts of one image).

    Parameters
    ----------
    predict
        Maps a batch ``(B, C, H, W)`` to predicted labels ``(B,)`` (or logits ``(B, K)``).
    images
        ``(N, C, H, W)``.
    max_shift
        Shifts are integers drawn uniformly in ``[-max_shift, max_shift]`` per axis.
    fill
        ``zeros`` (content may leave the frame) or ``circular``.
    """
    from biocnn.augment import shift_images

    views = []
    for _ in range(2):
        preds = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            shift = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=generator)
            preds.append(_as_preds(predict(shift_images(x, shift.float(), fill))))
        views.append(np.concatenate(preds))
    return agreement(*views)


@torch.no_grad()
def rotated_correct(
    predict: PredictFn, images: Tensor, labels: Tensor | np.ndarray, angles_deg: Sequence[float],
    *, fourier: bool = False,
) -> np.ndarray:
    """Which images stay correctly classified when rotated by each angle about the centre.

    Bilinear interpolation with zero fill (:func:`biocnn.augment.affine_sample`), or with
    ``fourier`` band-limited shears (:func:`biocnn.augment.fourier_rotate`, square images);
    multiples of 90° on square images are exact permutations of the pixels.

    Returns
    -------
    np.ndarray
        ``(N, P)`` bool for ``P`` angles.
    """
    from biocnn.augment import affine_sample, fourier_rotate

    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    out = np.zeros((len(images), len(angles_deg)), dtype=bool)
    zero = torch.zeros(len(images), 2, device=images.device)
    for p, a in enumerate(angles_deg):
        if a % 360 == 0:
            moved = images
        elif a % 90 == 0 and images.shape[-1] == images.shape[-2]:
            moved = torch.rot90(images, -int(a // 90) % 4, (2, 3))
        else:
            angle = torch.full((len(images),), math.radians(a), device=images.device)
            moved = fourier_rotate(images, angle) if fourier else affine_sample(images, angle, zero)
        out[:, p] = _as_preds(predict(moved)) == labels
    return out


@torch.no_grad()
def transform_consistency(
    predict: PredictFn, images: Tensor, generator: torch.Generator, *, rotate: bool = False,
    max_shift: float = 0.0, fourier: bool = False,
) -> float:
    """P(same prediction for two random views of one image): each view a uniform random
    rotation (``rotate``) and/or a uniform sub-pixel shift in ``[-max_shift, max_shift]``
    per axis, bilinear with zero fill, or with ``fourier`` band-limited and circular
    (:func:`~biocnn.augment.fourier_rotate`, :func:`~biocnn.augment.fourier_shift`: how a
    detector samples a moved or turned particle; bilinear also blurs the noise)."""
    from biocnn.augment import affine_sample, fourier_rotate, fourier_shift

    views = []
    for _ in range(2):
        n = len(images)
        angle = (torch.rand(n, generator=generator) * 2 * math.pi if rotate else torch.zeros(n))
        shift = ((torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift).to(images.device)
        angle = angle.to(images.device)
        if fourier:
            moved = fourier_shift(fourier_rotate(images, angle) if rotate else images, shift)
        else:
            moved = affine_sample(images, angle, shift)
        views.append(_as_preds(predict(moved)))
    return agreement(*views)


def circular_consistency(
    predict: PredictFn, images: Tensor, generator: torch.Generator, batch_size: int = 512
) -> float:
    """Consistency under random *circular* shifts over the whole frame (1.0 for an exact model)."""
    h, w = images.shape[-2:]
    return consistency(predict, images, max(h, w) // 2, generator, "circular", batch_size)


def classification_summary(
    logits_or_preds: Tensor | np.ndarray, labels: Tensor | np.ndarray, class_names: Sequence[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    Parameters
    ----------
    logits_or_preds
        Logits ``(N, K)`` or predicted labels ``(N,)``.
    labels
        True labels ``(N,)`` in ``[0, K)``.
    class_names
        ``K`` names (keys of ``per_class``, order of the confusion matrix).

    Returns
    -------
    dict
        ``{"images": N, "accuracy", "per_class": {name: {...}}, "confusion": (K, K) nested list}``.
    """
    conf = confusion_matrix(logits_or_preds, labels, len(class_names))
    return {
        "images": int(len(np.asarray(labels))),
        "accuracy": accuracy(logits_or_preds, labels),
        "per_class": precision_recall(conf, class_names),
        "confusion": conf.tolist(),
    }


@torch.no_grad()
def shifted_correct(
    predict: PredictFn,
    images: Tensor,
    labels: Tensor | np.ndarray,
    magnitudes: Sequence[float],
    generator: torch.Generator,
    fill: str = "zeros",
) -> np.ndarray:
    """Which images stay correctly classified when moved ``r`` pixels in a random direction.

    Each image gets its own direction ``theta ~ U(0, 2 pi)`` per magnitude; the shift
    ``(r sin theta, r cos theta)`` is rounded to whole pixels, so the translation is exact
    (no interpolation) and its length is ``r`` to within half a pixel per axis.

    Parameters
    ----------
    predict
        Maps a batch ``(B, C, H, W)`` to predicted labels ``(B,)`` or logits ``(B, K)``.
    images
        ``(N, C, H, W)``.
    labels
        ``(N,)`` true labels.
    magnitudes
        ``P`` shift lengths in pixels (0 = the image as it is).
    generator
        Draws the directions (CPU).
    fill
        ``zeros`` (content leaving the frame is lost) or ``circular``.

    Returns
    -------
    np.ndarray
        ``(N, P)`` bool.
    """
    from biocnn.augment import shift_images

    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    out = np.zeros((len(images), len(magnitudes)), dtype=bool)
    for p, r in enumerate(magnitudes):
        theta = torch.rand(len(images), generator=generator) * 2 * torch.pi
        shift = torch.round(float(r) * torch.stack([torch.sin(theta), torch.cos(theta)], 1))
        moved = shift_images(images, shift, fill) if r else images
        out[:, p] = _as_preds(predict(moved)) == labels
    return out
