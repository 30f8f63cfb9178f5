"""``biocnn calibrate``: temperature scaling and a decision threshold from held-out data.

A classifier trained on simulation is usually over-confident. :func:`run_calibrate` fits one
temperature ``T`` (softmax of ``logits / T``) by minimising the negative log-likelihood of
a labelled held-out set, picks the threshold on P(``good_class``) that maximises balanced
accuracy (the mean of good kept and junk rejected), and writes a copy of the checkpoint
with ``temperature``, ``threshold`` and the held-out metrics (``calibration``), which
``biocnn select`` applies (``predict`` and ``evaluate`` report the model's own probabilities).

Example
-------
    biocnn calibrate runs/selector/best.pt ca_heldout/ --out selector.pt
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biocnn.atomic import atomic_path, check_outputs
from biocnn.checkpoint import load_classifier, read_checkpoint
from biocnn.config import CalibrateConfig, to_plain
from biocnn.data import build_dataset
from biocnn.engine import predict_logits
from biocnn.errors import BiocnnError, OptionError

__all__ = ["CalibrateConfig", "run_calibrate", "fit_temperature", "roc_auc",
           "best_threshold", "expected_calibration_error"]


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The ``T > 0`` minimising ``cross_entropy(logits / T, labels)`` (a convex problem in
    ``log T``; golden-section search over ``T`` in [0.05, 20])."""
    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold on ``scores`` (keep ``>=``) with the best balanced accuracy, and that
    accuracy; candidates are midpoints between distinct scores."""
    values = np.unique(scores)
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, [1.0]]) if len(values) > 1 \
        else np.asarray([0.5])
    best, best_t = -1.0, 0.5
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    for t in candidates:
        keep = scores >= t
        bal = 0.5 * ((keep & positive).sum() / n_pos + (~keep & ~positive).sum() / n_neg)
        if bal > best:
            best, best_t = float(bal), float(t)
    return best_t, best


def expected_calibration_error(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |confidence - accuracy| over ``bins`` equal-width confidence bins, weighted by
    their share of the images."""
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (prob > lo) & (prob <= hi)
        if inside.any():
            err += inside.mean() * abs(prob[inside].mean() - correct[inside].mean())
    return float(err)


def _metrics(p_good: np.ndarray, is_good: np.ndarray, threshold: float) -> dict[str, float]:
    keep = p_good >= threshold
    return {
        "auc": roc_auc(p_good, is_good),
        "accuracy": float((keep == is_good).mean()),
        "good_kept": float(keep[is_good].mean()) if is_good.any() else float("nan"),
        "junk_rejected": float((~keep[~is_good]).mean()) if (~is_good).any() else float("nan"),
    }


def run_calibrate(cfg: CalibrateConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate ``cfg.model`` on ``cfg.data`` and write ``cfg.out``; returns the record
    stored as ``calibration`` in the new checkpoint."""
    for field in ("model", "data", "out"):
        if not getattr(cfg, field):
            raise OptionError(field, None, "is required")
    out = check_outputs({"out": cfg.out}, [cfg.model], overwrite=cfg.overwrite)["out"]
    clf = load_classifier(cfg.model, cfg.device)
    if cfg.good_class not in clf.class_names:
        raise OptionError("good_class", repr(cfg.good_class), "not a class of the model "
                          f"({', '.join(clf.class_names)})")
    good = clf.class_names.index(cfg.good_class)
    data = build_dataset(cfg.data, preprocess=clf.preprocess, views=clf.views,
                         class_names=clf.class_names)
    log(f"calibrating {clf.path} on {len(data)} held-out images")
    logits = predict_logits(clf.model, data, batch_size=cfg.batch_size, device=clf.device,
                            standardize=clf.standardize, progress=cfg.progress)
    labels = torch.from_numpy(data.labels)
    is_good = data.labels == good
    if is_good.all() or not is_good.any():
        raise BiocnnError(f"{cfg.data}: calibration needs images of {cfg.good_class!r} and of the "
                          "other classes")
    temperature = fit_temperature(logits, labels)
    if not 0.06 < temperature < 19:  # at a bound of the search: the data do not fix it
        warnings.warn(f"{cfg.data}: the fitted temperature {temperature:.3g} is at the search "
                      "bound; the held-out set may be too small or not separable", stacklevel=2)
    before = logits.softmax(1)
    after = (logits / temperature).softmax(1)
    threshold, _ = best_threshold(after[:, good].numpy(), is_good)
    record = {
        "data": str(cfg.data),
        "images": len(data),
        "temperature": temperature,
        "threshold": threshold,
        "nll_before": float(F.cross_entropy(logits, labels)),
        "nll_after": float(F.cross_entropy(logits / temperature, labels)),
        "ece_before": expected_calibration_error(
            before.max(1).values.numpy(), (before.argmax(1) == labels).numpy()),
        "ece_after": expected_calibration_error(
            after.max(1).values.numpy(), (after.argmax(1) == labels).numpy()),
        "at_threshold": _metrics(after[:, good].numpy(), is_good, threshold),
        "at_0.5": _metrics(after[:, good].numpy(), is_good, 0.5),
    }
    ckpt = read_checkpoint(cfg.model)
    ckpt.pop("train_state", None)  # a shipped model needs no optimizer state
    ckpt.update(temperature=temperature, threshold=threshold, calibration=to_plain(record))
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    log(f"temperature {temperature:.3f}, threshold {threshold:.3f}; held-out AUC "
        f"{record['at_threshold']['auc']:.4f}, accuracy {record['at_threshold']['accuracy']:.4f} "
        f"(good kept {record['at_threshold']['good_kept']:.3f}, junk rejected "
        f"{record['at_threshold']['junk_rejected']:.3f}); ECE {record['ece_before']:.4f} -> "
        f"{record['ece_after']:.4f}; wrote {Path(out)}")
    return record
