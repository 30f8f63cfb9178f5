"""biocnn.tasks.predict: checkpoints, byte-sized batches, streaming selection, output checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from biocnn.checkpoint import load_classifier, save_checkpoint
from biocnn.data import PreprocessConfig, ViewSpec, files_dataset
from biocnn.data.inputs import MEMORY_BUDGET, batch_for
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.models import create_model
from biocnn.plots import plot_heatmap_gallery
from biocnn.tasks.predict import PredictConfig, run_predict

BOX = 16


def _checkpoint(path: Path, names: list[str]) -> Path:
    model = create_model("invariant", num_classes=len(names), widths=[4, 8])
    pre = PreprocessConfig(box=BOX, apix=1.0)
    return save_checkpoint(path, model, {"class_names": names, "preprocess": pre.to_dict(),
                                         "views": ViewSpec(slices="all").to_dict()})


def _stack(path: Path, n: int, seed: int = 0, size: int = BOX, apix: float = 1.0) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((n, size, size)).astype(np.float32)
    write_mrc(path, data, apix=apix, is_stack=True)
    return data


def test_load_classifier(tmp_path: Path) -> None:
    clf = load_classifier(_checkpoint(tmp_path / "m.pt", ["x", "y"]), "cpu")
    assert clf.class_names == ["x", "y"] and clf.box == BOX and clf.views.slices == "all"
    assert not clf.model.training
    ckpt = tmp_path / "bad.pt"
    save_checkpoint(ckpt, create_model("invariant", num_classes=2, widths=[4]),
                    {"class_names": ["x", "y"], "preprocess": {"box": BOX}, "views": {}})
    with pytest.raises(BiocnnError, match="bad.pt: the recorded preprocessing"):
        load_classifier(ckpt)


def test_predict_task_streams_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("biocnn.tasks.predict.MEMORY_BUDGET", 3 * BOX * BOX * 4)  # 3-image blocks
    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"])
    a, b = _stack(tmp_path / "a.mrcs", 5, 1), _stack(tmp_path / "b.mrcs", 4, 2)
    cfg = PredictConfig(inputs=(str(tmp_path / "*.mrcs"),), model=str(ckpt), device="cpu",
                        progress=False)
    first = run_predict(cfg, log=lambda _: None)
    assert first.probabilities.shape == (9, 2) and first.selected is None
    np.testing.assert_allclose(first.probabilities.sum(1), 1, atol=1e-5)
    assert [r["images"] for r in first.aggregates] == [5, 4]
    chosen = first.class_names[int(first.predicted[0])]  # a class with at least one image
    cfg = dataclasses.replace(cfg, select=chosen, out_stack=str(tmp_path / "out" / "x.mrcs"))
    with pytest.warns(UserWarning, match="300 kV"):
        result = run_predict(cfg, log=lambda _: None)
    np.testing.assert_array_equal(result.probabilities, first.probabilities)
    rows = np.flatnonzero(result.predicted == result.predicted[0])
    assert result.selected == len(rows) >= 1
    with mrcfile.open(tmp_path / "out" / "x.mrcs") as mrc:
        written = mrc.data.reshape(-1, *a.shape[1:])  # one section reads as 2D
        np.testing.assert_array_equal(written, np.concatenate([a, b])[rows])
        assert mrc.header.dmean == pytest.approx(np.concatenate([a, b])[rows].mean(), abs=1e-5)
    star = starfile.read(tmp_path / "out" / "x.star", always_dict=True)  # rows beside the stack
    assert len(star["particles"]) == len(rows)
    assert (star["particles"]["biocnnClassName"] == chosen).all()


def test_batches_are_sized_by_bytes(tmp_path: Path) -> None:
    clf = load_classifier(_checkpoint(tmp_path / "m.pt", ["x", "y"]), "cpu")
    _stack(tmp_path / "small.mrcs", 2, size=BOX)
    _stack(tmp_path / "large.mrcs", 2, size=256)
    small = files_dataset([tmp_path / "small.mrcs"], preprocess=clf.preprocess, views=clf.views)
    large = files_dataset([tmp_path / "large.mrcs"], preprocess=clf.preprocess, views=clf.views)
    assert batch_for(small, 256) == 256  # the requested size when it fits
    budget = 10 * large.bytes_per_image()
    assert batch_for(large, 256, budget) == 10 and batch_for(large, 4, budget) == 4
    assert batch_for(large, 256, 1) == 1  # never 0
    assert batch_for(large, 256) * large.bytes_per_image() <= MEMORY_BUDGET


def test_selection_rejects_mixed_sizes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", ["x"])  # one class: every image is selected
    _stack(tmp_path / "a.mrcs", 2, size=BOX)
    _stack(tmp_path / "b.mrcs", 2, size=BOX + 4)
    cfg = PredictConfig(inputs=(str(tmp_path / "a.mrcs"), str(tmp_path / "b.mrcs")),
                        model=str(ckpt), select="x", out_stack=str(tmp_path / "sel.mrcs"),
                        device="cpu", progress=False)
    with pytest.raises(BiocnnError, match="differ in size"):
        run_predict(cfg, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mrcs", "b.mrcs", "m.pt"]


def test_star_output_rejects_volumes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"])
    write_mrc(tmp_path / "v.map", np.ones((BOX, BOX, BOX), np.float32), apix=1.0)
    cfg = PredictConfig(inputs=(str(tmp_path / "v.map"),), model=str(ckpt),
                        star=str(tmp_path / "o.star"), device="cpu", progress=False)
    with pytest.raises(BiocnnError, match="volume slices have no RELION image name"):
        run_predict(cfg, log=lambda _: None)


def test_heatmap_gallery(tmp_path: Path) -> None:
    images = np.random.default_rng(0).standard_normal((5, 8, 8))
    path = plot_heatmap_gallery(images, np.ones((5, 8, 8)) * 0.5, list("abcde"),
                                tmp_path / "g.png", cols=2)
    assert path.read_bytes()[:4] == b"\x89PNG"
