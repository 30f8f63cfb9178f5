"""Calibration: temperature scaling, AUC, the balanced-accuracy threshold, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn import BiocnnError, create_model
from biocnn.checkpoint import load_classifier, read_checkpoint, save_checkpoint
from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.io.mrc import write_mrc
from biocnn.tasks.calibrate import (
    CalibrateConfig,
    best_threshold,
    expected_calibration_error,
    fit_temperature,
    roc_auc,
    run_calibrate,
)


def test_fit_temperature_recovers_an_overconfident_scale() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.randn(20000, 3, generator=g) * 1.5
    labels = torch.multinomial(true.softmax(1), 1, generator=g)[:, 0]
    assert fit_temperature(true * 3.0, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(true, labels) == pytest.approx(1.0, rel=0.05)


@settings(max_examples=50, deadline=None)
@given(scores=st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0]), min_size=2, max_size=30),
       seed=st.integers(0, 99))
def test_auc_equals_the_pairwise_definition(scores: list[float], seed: int) -> None:
    s = np.asarray(scores)
    pos = np.random.default_rng(seed).random(len(s)) < 0.5
    if pos.all() or not pos.any():
        assert np.isnan(roc_auc(s, pos))
        return
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[pos] for b in s[~pos]]
    assert roc_auc(s, pos) == pytest.approx(np.mean(pairs))


def test_best_threshold_and_ece() -> None:
    scores = np.asarray([0.1, 0.2, 0.35, 0.6, 0.8, 0.9])
    pos = np.asarray([False, False, False, True, True, True])
    t, bal = best_threshold(scores, pos)
    assert 0.35 < t <= 0.6 and bal == 1.0
    assert expected_calibration_error(np.full(10, 0.9), np.ones(10, bool)) == pytest.approx(0.1)
    assert expected_calibration_error(np.full(10, 0.9), np.r_[np.ones(9), 0].astype(bool)) == \
        pytest.approx(0.0)


def _disc_data(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    c = np.arange(16) - 8
    r = np.hypot(c[:, None], c[None, :])
    for name, img in (("good", (r < 4).astype(np.float32)), ("junk", np.zeros((16, 16), np.float32))):
        stack = img + 0.7 * rng.standard_normal((n, 16, 16)).astype(np.float32)
        write_mrc(root / name / "s.mrcs", stack, apix=2.0, is_stack=True)
    return root


def test_calibrate_writes_a_checkpoint_select_can_use(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=[4, 8])
    with torch.no_grad():  # a crude disc detector: large logits (over-confident)
        for p in model.parameters():
            p.mul_(3.0)
    pre = PreprocessConfig(box=16, apix=2.0)
    save_checkpoint(tmp_path / "m.pt", model, {"class_names": ["good", "junk"],
                                               "preprocess": pre.to_dict(),
                                               "views": ViewSpec().to_dict()})
    data = _disc_data(tmp_path / "heldout", 40, 1)
    out = tmp_path / "cal.pt"
    record = run_calibrate(CalibrateConfig(model=str(tmp_path / "m.pt"), data=str(data),
                                           out=str(out), device="cpu", progress=False),
                           log=lambda _: None)
    assert record["nll_after"] <= record["nll_before"] + 1e-6
    ckpt = read_checkpoint(out)
    assert ckpt["temperature"] == pytest.approx(record["temperature"]) and 0 <= ckpt["threshold"] <= 1
    assert ckpt["calibration"]["images"] == 80 and "train_state" not in ckpt
    assert load_classifier(out, "cpu").class_names == ["good", "junk"]
    with pytest.raises(BiocnnError, match="exists"):
        run_calibrate(CalibrateConfig(model=str(tmp_path / "m.pt"), data=str(data), out=str(out),
                                      device="cpu", progress=False), log=lambda _: None)
    with pytest.raises(BiocnnError, match=r"^good_class 'x': not a class of the model"):
        run_calibrate(CalibrateConfig(model=str(tmp_path / "m.pt"), data=str(data),
                                      out=str(tmp_path / "c2.pt"), good_class="x", device="cpu",
                                      progress=False), log=lambda _: None)
    from typer.testing import CliRunner

    from biocnn.cli import app

    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "m.pt"), str(data), "--out",
                                      str(tmp_path / "c2.pt"), "--good-class", "x", "--device", "cpu"])
    assert result.exit_code == 1 and "--good-class 'x': not a class of the model" in result.stderr
