"""biocnn.tasks.predict: input expansion, output checks, checkpoints, streaming writers."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from biocnn.checkpoint import save_checkpoint
from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.models import create_model
from biocnn.plots import plot_heatmap_gallery
from biocnn.tasks.predict import (
    PredictConfig,
    _prob_columns,
    check_output_path,
    expand_inputs,
    load_classifier,
    run_predict,
)

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


def test_expand_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in ("a/x.mrcs", "a/sub/y.mrc", "a/.hidden.mrc", "b.map", "c.mrcs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    files = expand_inputs(["c.mrcs", "a", "*.m*", "c.mrcs"])
    assert files == [Path("c.mrcs"), Path("a/sub/y.mrc"), Path("a/x.mrcs"), Path("b.map")]
    assert expand_inputs(["**/*.mrc"]) == [Path("a/sub/y.mrc")]
    with pytest.raises(BiocnnError, match="no files match"):
        expand_inputs(["*.star"])
    with pytest.raises(BiocnnError, match="not found"):
        expand_inputs(["missing.mrc"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BiocnnError, match="no .mrc"):
        expand_inputs(["empty"])


def test_check_output_path(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new" / "deeper" / "o.csv", "--csv").name == "o.csv"
    assert not (tmp_path / "new").exists()  # nothing is created
    (tmp_path / "f").write_text("")
    with pytest.raises(BiocnnError, match=r"--star .*f is not a directory"):
        check_output_path(tmp_path / "f" / "o.star", "--star")
    with pytest.raises(BiocnnError, match="is a directory"):
        check_output_path(tmp_path, "--cam")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(BiocnnError, match="not writable"):
            check_output_path(ro / "o.csv", "--csv")


def test_prob_columns() -> None:
    assert _prob_columns(["good", "bad junk", "2"], "p_") == ["p_good", "p_bad_junk", "p_2"]
    assert _prob_columns(["a b", "a-b"], "p_") == ["p_1", "p_2"]  # collisions fall back


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
    monkeypatch.setattr("biocnn.tasks.predict.CHUNK", 3)
    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"])
    a, b = _stack(tmp_path / "a.mrcs", 5, 1), _stack(tmp_path / "b.mrcs", 4, 2)
    cfg = PredictConfig(inputs=(str(tmp_path / "*.mrcs"),), model=str(ckpt), select="x",
                        out_stack=str(tmp_path / "out" / "x.mrcs"), device="cpu", progress=False)
    result = run_predict(cfg, log=lambda _: None)
    assert result.probabilities.shape == (9, 2)
    np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-5)
    rows = np.flatnonzero(result.predicted == 0)
    assert result.selected == len(rows)
    assert [r["images"] for r in result.inputs] == [5, 4]
    if len(rows):
        with mrcfile.open(tmp_path / "out" / "x.mrcs") as mrc:
            written = mrc.data.reshape(-1, *a.shape[1:])  # one section reads as 2D
            np.testing.assert_array_equal(written, np.concatenate([a, b])[rows])
            assert mrc.header.dmean == pytest.approx(np.concatenate([a, b])[rows].mean(), abs=1e-5)


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
