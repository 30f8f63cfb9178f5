"""Smoke tests of ``TrainConfig.amp`` (bf16 autocast) and ``TrainConfig.compile`` (torch.compile).

One tiny epoch each: the loss must be finite and close to the plain float32 run's, and the
weights must have moved and stayed float32. No timings are asserted.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from biocnn.config import TrainConfig
from biocnn.data import TensorData
from biocnn.engine import FitResult, fit
from biocnn.models.registry import create_model


def _data() -> TensorData:
    """``(16, 1, 16, 16)`` noise images of 2 classes (a bright centre for class 1)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    images = torch.randn(16, 1, 16, 16, generator=gen)
    images[:, :, 6:10, 6:10] += 2 * labels.view(-1, 1, 1, 1).float()
    return TensorData(images, labels)


def _train(**options: bool) -> tuple[FitResult, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Fit one epoch; returns the result and the state before and after training."""
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(4, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False, **options)
    result = fit(model, _data(), None, cfg)
    return result, before, model.state_dict()


def _check_trained(result: FitResult, before: dict, after: dict) -> None:
    assert math.isfinite(result.history[0]["train_loss"])
    for key, value in after.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert torch.isfinite(value).all(), key
    assert not torch.equal(after["features.0.0.weight"], before["features.0.0.weight"])
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])


@pytest.fixture(scope="module")
def float32_loss() -> float:
    result, _, _ = _train()
    return result.history[0]["train_loss"]


def test_amp_epoch(float32_loss: float) -> None:
    result, before, after = _train(amp=True)
    _check_trained(result, before, after)
    # bf16 keeps ~3 significant digits: the same training, slightly different numbers
    assert result.history[0]["train_loss"] == pytest.approx(float32_loss, rel=0.05)


def _compile_unavailable() -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) does not support this Python/platform"
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "torch.compile's CPU backend (inductor) needs a C++ compiler; none found"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_compile_unavailable() is not None, reason=str(_compile_unavailable()))
def test_compile_epoch(float32_loss: float) -> None:
    result, before, after = _train(compile=True)
    _check_trained(result, before, after)
    assert result.history[0]["train_loss"] == pytest.approx(float32_loss, rel=1e-3)
