"""Classification and shift-robustness metrics."""

from __future__ import annotations

import numpy as np
import torch

from biocnn.metrics import (
    accuracy,
    agreement,
    circular_consistency,
    confusion_matrix,
    consistency,
    placement_summary,
    precision_recall,
)


def test_accuracy_confusion_precision_recall() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    assert accuracy(preds, labels) == 0.6
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 3).float()
    assert accuracy(logits, labels) == 0.6
    conf = confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    pr = precision_recall(conf, ["a", "b", "c"])
    assert pr["b"]["precision"] == 2 / 3 and pr["b"]["recall"] == 1.0
    assert pr["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_placement_summary_worst_case() -> None:
    correct = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]], bool)
    s = placement_summary(correct)
    assert s["mean"] == 8 / 12 and s["worst_case"] == 0.5 and s["worst_placement"] == 0.5


def test_consistency_of_invariant_and_position_bound_predictors() -> None:
    images = torch.randn(64, 1, 10, 10)
    total = lambda x: (x.sum((1, 2, 3)) > 0).long()  # noqa: E731  invariant to circular shifts
    corner = lambda x: (x[:, 0, 0, 0] > 0).long()  # noqa: E731  reads one fixed pixel
    g = torch.Generator().manual_seed(0)
    assert circular_consistency(total, images, g) == 1.0
    assert circular_consistency(corner, images, g) < 0.8
    assert consistency(total, images, 2, g, fill="circular") == 1.0
    assert agreement(np.array([1, 2, 3]), np.array([1, 0, 3])) == 2 / 3


def test_rotations_and_transform_consistency() -> None:
    import torch

    from biocnn.metrics import rotated_correct, transform_consistency

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 12, 12, generator=g)
    labels = np.arange(6) % 2

    def mean_sign(batch: torch.Tensor) -> torch.Tensor:  # rotation-invariant up to interpolation
        return (batch.mean((1, 2, 3)) > 0).long()

    truth = mean_sign(x).numpy()
    hits = rotated_correct(mean_sign, x, truth, [0, 90, 180, 270])
    assert hits.shape == (6, 4) and hits.all()  # exact multiples of 90°

    def top_row(batch: torch.Tensor) -> torch.Tensor:  # sees only row 0: not invariant
        return (batch[:, 0, 0, :].mean(1) > 0).long()

    t = top_row(x).numpy()
    assert rotated_correct(top_row, x, t, [0])[:, 0].all()
    assert not rotated_correct(top_row, x, t, [90, 180]).all()
    assert transform_consistency(mean_sign, x, g, rotate=False, max_shift=0.0) == 1.0
    assert 0 <= transform_consistency(top_row, x, g, rotate=True) <= 1
    assert rotated_correct(mean_sign, x, labels, [45]).shape == (6, 1)
