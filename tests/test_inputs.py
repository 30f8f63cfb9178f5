"""biocnn.data.inputs: patterns to files, files to sources (MRC runs, STAR, cryoSPARC .cs),
global indices, pixel-size and layout overrides, refusals of unsupported formats."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.data.inputs import expand_inputs, input_kind, open_inputs
from biocnn.errors import BiocnnError
from biocnn.io.mrc import write_mrc
from biocnn.io.star import format_image_name, write_star

PRE = PreprocessConfig(box=16, apix=2.0)


def _stack(path: Path, n: int, apix: float = 2.0, size: int = 16) -> np.ndarray:
    data = np.random.default_rng(n).standard_normal((n, size, size)).astype(np.float32)
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


def test_input_kind_and_refusals(tmp_path: Path) -> None:
    _stack(tmp_path / "s.mrcs", 2)
    (tmp_path / "p.star").write_text("data_\nloop_\n_rlnImageName\n1@s.mrcs\n")
    (tmp_path / "noext").write_bytes((tmp_path / "s.mrcs").read_bytes())
    (tmp_path / "t.tif").write_bytes(b"II*\0" + bytes(2000))
    (tmp_path / "h.mrc").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))
    assert [input_kind(tmp_path / n) for n in ("s.mrcs", "p.star", "noext")] == ["mrc", "star", "mrc"]
    for name, what in (("t.tif", "TIFF"), ("h.mrc", "HDF5")):
        with pytest.raises(BiocnnError, match=f"{name}: {what} is not supported.*MRC"):
            open_inputs([str(tmp_path / name)], preprocess=PRE, views=ViewSpec())


def test_sources_offsets_and_names(tmp_path: Path) -> None:
    a, b, c = _stack(tmp_path / "a.mrcs", 3), _stack(tmp_path / "b.mrcs", 2), _stack(tmp_path / "c.mrcs", 4)
    star = write_star(tmp_path / "p.star", pd.DataFrame({
        "rlnImageName": [format_image_name(i, "b.mrcs") for i in (1, 0)]}), apix=2.0, image_size=16)
    inputs = open_inputs([str(tmp_path / "a.mrcs"), str(star), str(tmp_path / "c.mrcs")],
                         preprocess=PRE, views=ViewSpec())
    assert [(s.kind, s.offset, len(s)) for s in inputs.sources] == [("mrc", 0, 3), ("star", 3, 2),
                                                                     ("mrc", 5, 4)]
    assert len(inputs) == 9 and inputs.sources[1].table.path == star
    assert inputs.name(3) == f"000002@{tmp_path / 'b.mrcs'}"  # the STAR's own row order
    src, row = inputs.locate(6)
    assert src.offset == 5 and row == 1
    np.testing.assert_array_equal(src.dataset.index.read(row), c[1])
    assert {p.name for p in inputs.files()} == {"a.mrcs", "p.star", "b.mrcs", "c.mrcs"}
    assert not inputs.has_volume_views
    del a, b


def test_apix_override_and_layout_override(tmp_path: Path) -> None:
    _stack(tmp_path / "a.mrcs", 2, apix=1.0)
    inputs = open_inputs([str(tmp_path / "a.mrcs")], preprocess=PRE, views=ViewSpec(), apix=2.5)
    assert (inputs.sources[0].dataset.index.apix == 2.5).all()
    cube = tmp_path / "cube.mrc"  # space group 1 and cubic: a volume unless --stack
    with mrcfile.new(cube) as mrc:
        mrc.set_data(np.zeros((16, 16, 16), np.float32))
        mrc.header.ispg = 1
        mrc.voxel_size = 2.0
    vol = open_inputs([str(cube)], preprocess=PRE, views=ViewSpec())
    stack = open_inputs([str(cube)], preprocess=PRE, views=ViewSpec(as_volume=False))
    assert vol.sources[0].dataset.index.layouts == ("volume",) and len(vol) == 1
    assert vol.has_volume_views
    assert stack.sources[0].dataset.index.layouts == ("stack",) and len(stack) == 16


def _cs(path: Path, rel: list[str], idx: list[int], psize: float) -> Path:
    dtype = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
             ("ctf/df1_A", "<f4")]
    rec = np.zeros(len(rel), dtype)
    rec["uid"] = np.arange(len(rel)) + 100
    rec["blob/path"] = [r.encode() for r in rel]
    rec["blob/idx"] = idx
    rec["blob/psize_A"] = psize
    rec["ctf/df1_A"] = 15000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, rec)
    return path


def test_cryosparc_cs_source(tmp_path: Path) -> None:
    project = tmp_path / "P3"
    data = _stack(project / "J2" / "extract" / "parts.mrc", 5, apix=0.0)
    cs = _cs(project / "J12" / "J12_particles.cs", [">J2/extract/parts.mrc"] * 3, [4, 0, 2], 2.0)
    inputs = open_inputs([str(cs)], preprocess=PRE, views=ViewSpec(), cs_project=project)
    (src,) = inputs.sources
    assert src.kind == "cs" and src.path == cs and len(src) == 3
    assert src.dataset.index.section.tolist() == [4, 0, 2]
    assert (src.dataset.index.apix == 2.0).all()  # blob/psize_A, not the empty header
    np.testing.assert_array_equal(src.dataset.index.read(0), data[4])
    # without --cs-project: found from the .cs file's parents (PROJECT/J12/x.cs)
    assert len(open_inputs([str(cs)], preprocess=PRE, views=ViewSpec())) == 3
    with pytest.raises(BiocnnError, match="^cs_project "):
        open_inputs([str(cs)], preprocess=PRE, views=ViewSpec(), cs_project=tmp_path)
    bad = _cs(project / "J13" / "bad.cs", ["J2/extract/parts.mrc"], [9], 2.0)
    with pytest.raises(BiocnnError, match="out of range"):
        open_inputs([str(bad)], preprocess=PRE, views=ViewSpec())


def test_forward_bytes_scales_with_the_image() -> None:
    from biocnn.data.inputs import forward_bytes
    from biocnn.models import create_model

    model = create_model("invariant", num_classes=2, widths=[4, 8]).eval()
    small, large = forward_bytes(model, 16), forward_bytes(model, 32)
    assert small > 4 * 16 * 16  # at least the first layer's activations
    assert large == pytest.approx(4 * small, rel=0.2)  # activations grow with the area
    assert forward_bytes(model, 16, tta=True) == small + 8 * 4 * 16 * 16
