"""The selector shipped in the package: loads offline with weights_only, is calibrated,
and its P(good) is exactly invariant to 90° rotations, flips and circular shifts."""

from __future__ import annotations

import pytest
import torch

from biocnn.checkpoint import load_classifier
from biocnn.tasks.select import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="no shipped selector")


def test_shipped_selector_is_small_calibrated_and_exact() -> None:
    assert SHIPPED_MODEL.stat().st_size <= 5 * 2**20
    clf = load_classifier(SHIPPED_MODEL, "cpu")
    assert clf.class_names == ["good", "junk"] and clf.meta["model_name"].startswith("invariant_d4")
    temperature, threshold = clf.meta["temperature"], clf.meta["threshold"]
    assert temperature > 0 and 0 < threshold < 1 and clf.meta["calibration"]["at_threshold"]["auc"] > 0.9
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, clf.box, clf.box, generator=g)
    x[:, :, 20:44, 24:40] += 2.0

    def p_good(images: torch.Tensor) -> torch.Tensor:
        return (clf.logits(images) / temperature).softmax(1)[:, 0]

    base = p_good(x)
    for view in (torch.rot90(x, 1, (2, 3)), torch.rot90(x, 2, (2, 3)), x.flip(-1),
                 torch.roll(x, (5, -9), (2, 3))):
        torch.testing.assert_close(p_good(view), base, atol=1e-4, rtol=0)
