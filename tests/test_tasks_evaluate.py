"""biocnn.tasks.evaluate and the metrics it adds: shift lengths, summaries, run_evaluate."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import biocnn.tasks.evaluate
from biocnn.checkpoint import save_checkpoint
from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.data.inputs import forward_bytes
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.metrics import classification_summary, shifted_correct
from biocnn.models import create_model
from biocnn.report import class_table
from biocnn.tasks.evaluate import EvaluateConfig, default_shifts, run_evaluate


def test_default_shifts() -> None:
    assert default_shifts(24) == [0, 2, 4]
    assert default_shifts(64) == [0, 2, 4, 8, 16]
    assert default_shifts(8) == [0, 2]


def test_classification_summary() -> None:
    s = classification_summary(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert s["images"] == 4 and s["accuracy"] == 0.75
    assert s["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert s["per_class"]["b"]["precision"] == 0.5 and s["per_class"]["c"]["recall"] == 0.5
    assert class_table(s).row_count == 3


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 7), st.integers(0, 2**31 - 1))
def test_shifted_correct_moves_by_the_length(r: float, seed: int) -> None:
    """A delta at the centre lands ``r`` px away (to within rounding) in a random direction."""
    n, size = 16, 24
    images = torch.zeros(n, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0

    def predict(x: torch.Tensor) -> torch.Tensor:
        flat = x[:, 0].flatten(1).argmax(1)
        dy, dx = flat // size - size // 2, flat % size - size // 2
        dist = torch.sqrt((dy**2 + dx**2).float())
        return (abs(dist - r) <= math.sqrt(0.5) + 1e-6).long()  # "1" = moved by about r

    ok = shifted_correct(predict, images, np.ones(n), [r], torch.Generator().manual_seed(seed))
    assert ok.shape == (n, 1) and ok.all()


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("p", "q"):
        write_mrc(root / name / "s.mrcs", rng.standard_normal((5, 16, 16)).astype(np.float32),
                  apix=1.0, is_stack=True)
    return root


def test_run_evaluate(tmp_path: Path) -> None:
    model = create_model("invariant", num_classes=2, widths=[4, 8])
    ckpt = save_checkpoint(tmp_path / "m.pt", model, {
        "class_names": ["p", "q"], "preprocess": PreprocessConfig(box=16, apix=1.0).to_dict(),
        "views": ViewSpec().to_dict(),
    })
    cfg = EvaluateConfig(data=str(_folder(tmp_path / "maps")), model=str(ckpt),
                         out=str(tmp_path / "ev"), shifts=(0, 3), device="cpu", progress=False,
                         batch_size=4, tta=True)
    report = run_evaluate(cfg, log=lambda _: None).report
    assert report == json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert report["images"] == 10 and report["tta"] is True
    assert report["shift_robustness"]["shifts_px"] == [0, 3]
    assert report["shift_robustness"]["consistency_max_shift_px"] == 1  # 8 % of 16 px
    with pytest.raises(BiocnnError, match="shifts"):
        run_evaluate(EvaluateConfig(data="x", model="y", out="z", shifts=(-1,)))
    with pytest.raises(BiocnnError, match="model: is required"):
        run_evaluate(EvaluateConfig(data="x", out="z"))


def test_evaluate_outputs_are_safe(tmp_path: Path) -> None:
    model = create_model("invariant", num_classes=2, widths=[4, 8])
    maps = _folder(tmp_path / "maps")
    ckpt = save_checkpoint(tmp_path / "runs" / "m.pt", model, {
        "class_names": ["p", "q"], "preprocess": PreprocessConfig(box=16, apix=1.0).to_dict(),
        "views": ViewSpec().to_dict(),
    })
    base = EvaluateConfig(data=str(maps), model=str(ckpt), shifts=(0,), device="cpu",
                          progress=False, batch_size=4)
    for out, what in ((tmp_path / "runs", "m.pt"), (maps, "maps"), (maps / "p", "s.mrcs")):
        with pytest.raises(BiocnnError, match=f"^out .*would replace the input .*{what}"):
            run_evaluate(dataclasses.replace(base, out=str(out), overwrite=True))
    out = tmp_path / "ev"
    run_evaluate(dataclasses.replace(base, out=str(out)), log=lambda _: None)
    with pytest.raises(BiocnnError, match=r"exists and is not empty \(use overwrite\)$"):
        run_evaluate(dataclasses.replace(base, out=str(out)))
    report = run_evaluate(dataclasses.replace(base, out=str(out), overwrite=True, apix=2.0),
                          log=lambda _: None).report
    assert report["apix"] == 2.0 and json.loads((out / "evaluation.json").read_text())["apix"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "maps", "runs"]
    with pytest.raises(BiocnnError, match="apix"):
        run_evaluate(dataclasses.replace(base, out=str(tmp_path / "e2"), apix=-1.0))


def test_evaluate_batches_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte budget of 3 images gives the same report as the requested batch size."""
    model = create_model("invariant", num_classes=2, widths=[4, 8])
    ckpt = save_checkpoint(tmp_path / "m.pt", model, {
        "class_names": ["p", "q"], "preprocess": PreprocessConfig(box=16, apix=1.0).to_dict(),
        "views": ViewSpec().to_dict(),
    })
    cfg = EvaluateConfig(data=str(_folder(tmp_path / "maps")), model=str(ckpt), shifts=(0,),
                         device="cpu", progress=False, batch_size=64, out=str(tmp_path / "a"))
    big = run_evaluate(cfg, log=lambda _: None).report
    seen = []
    real = biocnn.tasks.evaluate.make_loader
    per_image = 4 * (4 * 16 * 16 + 2 * 16 * 16) + forward_bytes(model.eval(), 16)  # data + forward
    monkeypatch.setattr("biocnn.data.inputs.MEMORY_BUDGET", 3 * per_image)
    monkeypatch.setattr("biocnn.tasks.evaluate.make_loader",
                        lambda data, batch, **kw: seen.append(batch) or real(data, batch, **kw))
    small = run_evaluate(dataclasses.replace(cfg, out=str(tmp_path / "b")), log=lambda _: None).report
    assert seen == [3]
    assert small["accuracy"] == big["accuracy"] and small["confusion"] == big["confusion"]
    assert small["loss"] == pytest.approx(big["loss"], abs=1e-5)
