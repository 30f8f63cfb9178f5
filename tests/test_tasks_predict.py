"""biocnn.tasks.predict: checkpoints, byte-sized batches, streaming selection, output checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from typer.testing import CliRunner

from biocnn.checkpoint import load_classifier, save_checkpoint
from biocnn.cli import app
from biocnn.data import PreprocessConfig, ViewSpec, files_dataset
from biocnn.data.inputs import MEMORY_BUDGET, batch_for
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.io.writers import write_stack
from biocnn.models import create_model
from biocnn.plots import plot_heatmap_gallery
from biocnn.tasks.predict import PredictConfig, run_predict

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "realworld"
runner = CliRunner()

BOX = 16


def _checkpoint(path: Path, names: list[str], box: int = BOX, apix: float = 1.0) -> Path:
    model = create_model("invariant", num_classes=len(names), widths=[4, 8])
    pre = PreprocessConfig(box=box, apix=apix)
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
    ckpt = _checkpoint(tmp_path / "m.pt", ["x"])  # one class: every slice is selected
    volume = np.random.default_rng(4).standard_normal((BOX, BOX, BOX)).astype(np.float32)
    write_mrc(tmp_path / "v.map", volume, apix=1.0)
    cfg = PredictConfig(inputs=(str(tmp_path / "v.map"),), model=str(ckpt),
                        star=str(tmp_path / "o.star"), device="cpu", progress=False)
    with pytest.raises(BiocnnError, match="volume slices have no RELION image name"):
        run_predict(cfg, log=lambda _: None)
    # a selection of slices is still a stack (without the STAR beside it)
    cfg = dataclasses.replace(cfg, star=None, select="x", out_stack=str(tmp_path / "s.mrcs"))
    result = run_predict(cfg, log=lambda _: None)
    assert result.selected == BOX and not (tmp_path / "s.star").exists()
    with mrcfile.open(tmp_path / "s.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, volume)  # ViewSpec(slices="all"): every z slice


def test_heatmap_gallery(tmp_path: Path) -> None:
    images = np.random.default_rng(0).standard_normal((5, 8, 8))
    path = plot_heatmap_gallery(images, np.ones((5, 8, 8)) * 0.5, list("abcde"),
                                tmp_path / "g.png", cols=2)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_write_stack_streams_and_fails_cleanly(tmp_path: Path) -> None:
    data = np.random.default_rng(3).standard_normal((7, 12, 10)).astype(np.float32)
    path = write_stack(tmp_path / "s.mrcs", iter([data[:4], data[4:]]), 7, (12, 10), apix=1.5)
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack() and float(mrc.voxel_size.x) == 1.5
        np.testing.assert_array_equal(mrc.data, data)
        assert float(mrc.header.rms) == pytest.approx(data.std(), rel=1e-5)
    with pytest.raises(BiocnnError, match="3 images written, 7 expected"):
        write_stack(tmp_path / "short.mrcs", iter([data[:3]]), 7, (12, 10))
    with pytest.raises(BiocnnError, match="an image of 12x10 px in a stack of 8x8"):
        write_stack(tmp_path / "wrong.mrcs", iter([data]), 7, (8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mrcs"]  # no temporary file left


def test_write_stack_full_disk_is_one_line(tmp_path: Path) -> None:
    """A file-size limit (as a full disk) fails a plain write: one BiocnnError line, no
    SIGBUS (the stack is not memory-mapped) and no temporary file left."""
    code = (
        "import resource, sys, numpy as np\n"
        "from biocnn.io.writers import write_stack\n"
        "from biocnn.errors import BiocnnError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "blocks = (np.ones((10, 64, 64), np.float32) for _ in range(10))\n"
        "try:\n"
        f"    write_stack({str(tmp_path / 'big.mrcs')!r}, blocks, 100, (64, 64))\n"
        "except BiocnnError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert proc.stdout.strip().endswith("big.mrcs: file size limit reached")
    assert list(tmp_path.iterdir()) == []


def _cs(path: Path, stack: str, n: int) -> Path:
    rec = np.zeros(n, [("uid", "<u8"), ("blob/path", "S32"), ("blob/idx", "<u4"),
                       ("blob/psize_A", "<f4"), ("ctf/df1_A", "<f4")])
    rec["uid"], rec["blob/path"], rec["blob/idx"] = np.arange(n) + 7, stack.encode(), np.arange(n)
    rec["blob/psize_A"], rec["ctf/df1_A"] = 1.0, np.linspace(1e4, 2e4, n)
    with open(path, "wb") as fh:
        np.save(fh, rec)
    return path


def test_predict_cryosparc_selection(tmp_path: Path) -> None:
    from biocnn.io.cs import read_cs

    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"])
    (tmp_path / "P1" / "J5").mkdir(parents=True)
    _stack(tmp_path / "P1" / "J5" / "p.mrc", 6, apix=0.0)
    cs = _cs(tmp_path / "P1" / "J5" / "J5_particles.cs", "J5/p.mrc", 6)
    cfg = PredictConfig(inputs=(str(cs),), model=str(ckpt), cs_project=str(tmp_path / "P1"),
                        device="cpu", progress=False)
    first = run_predict(cfg, log=lambda _: None)
    chosen = first.class_names[int(first.predicted[0])]
    out = tmp_path / "sel.cs"
    result = run_predict(dataclasses.replace(cfg, select=chosen, out_cs=str(out)), log=lambda _: None)
    rows = np.flatnonzero(result.predicted == result.predicted[0])
    subset = read_cs(out).records
    assert subset["uid"].tolist() == (rows + 7).tolist()  # the selected rows, every field kept
    np.testing.assert_array_equal(subset["ctf/df1_A"], read_cs(cs).records["ctf/df1_A"][rows])
    with pytest.raises(BiocnnError, match=r"^out_cs .*o.cs: needs exactly one cryoSPARC .cs input$"):
        run_predict(dataclasses.replace(cfg, inputs=(str(tmp_path / "P1" / "J5" / "p.mrc"),),
                                        select="x", out_cs=str(tmp_path / "o.cs")), log=lambda _: None)
    assert not (tmp_path / "o.cs").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real-world files not present")
def test_real_files_predict_alone_and_through_their_star(tmp_path: Path) -> None:
    """Every shared real file predicts through the CLI alone and through its STAR file; the
    STAR's 2.806 Å is used, and the bare stack with --apix 2.806 gives the same answer."""
    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"], box=32, apix=2.806 * 8)
    runs = {}
    for name, extra in (("relion31.mrcs", []), ("relion31.mrcs", ["--apix", "2.806"]),
                        ("relion31.star", []), ("relion31.v2.star", ["--apix", "2.806"])):
        result = runner.invoke(app, ["predict", str(REAL / name), "--model", str(ckpt), "--json",
                                     "--device", "cpu", "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["images"] == 5
        runs[(name, *extra)] = doc
        if not extra and name.endswith(".mrcs"):  # the 1 Å header is a placeholder: warned
            assert "placeholder" in result.stderr and "--apix" in result.stderr
    star = runs[("relion31.star",)]["inputs"][0]["probabilities"]
    stack = runs[("relion31.mrcs", "--apix", "2.806")]["inputs"][0]["probabilities"]
    v2 = runs[("relion31.v2.star", "--apix", "2.806")]["inputs"][0]["probabilities"]
    assert star == pytest.approx(stack, abs=1e-5) and star == pytest.approx(v2, abs=1e-5)


def test_star_output_of_mixed_inputs_is_refused_before_predicting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import biocnn.tasks.predict as predict_mod
    from biocnn.io.star import format_image_name, write_star

    ckpt = _checkpoint(tmp_path / "m.pt", ["x", "y"])
    _stack(tmp_path / "a.mrcs", 2, size=BOX)
    parts = {"rlnImageName": [format_image_name(0, "a.mrcs")], "rlnClassNumber": [1]}
    import pandas as pd

    star = write_star(tmp_path / "p.star", pd.DataFrame(parts), apix=1.0, image_size=BOX)
    monkeypatch.setattr(predict_mod, "_probabilities", lambda *a: pytest.fail("predicted"))
    cfg = PredictConfig(inputs=(str(star), str(tmp_path / "a.mrcs")), model=str(ckpt),
                        star=str(tmp_path / "o.star"), device="cpu", progress=False)
    with pytest.raises(BiocnnError, match="different particle columns"):
        run_predict(cfg, log=lambda _: None)
