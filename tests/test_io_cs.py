"""cryoSPARC .cs particle tables: reading, resolving stacks in a project, subsets, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biocnn.errors import BiocnnError
from biocnn.io.cs import read_cs, write_cs
from biocnn.io.mrc import inspect_mrc, read_sections, write_mrc

#: The fields (and their types) of a cryoSPARC particles .cs file, abridged.
CS_DTYPE = [
    ("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"),
    ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
    ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
    ("alignments2D/class", "<u4"), ("alignments2D/pose", "<f4"), ("alignments2D/shift", "<f4", (2,)),
]


def _records(paths: list[bytes], idx: list[int], psize: float = 1.3, dtype: list = CS_DTYPE) -> np.ndarray:
    rec = np.zeros(len(paths), dtype)
    rec["uid"] = np.arange(len(paths), dtype=np.uint64) * 7919 + 10**15
    rec["blob/path"] = paths
    rec["blob/idx"] = idx
    rec["blob/shape"] = (16, 16)
    rec["blob/psize_A"] = psize
    rec["blob/sign"] = -1.0
    rec["ctf/type"] = b"spline"
    rec["ctf/accel_kv"], rec["ctf/cs_mm"], rec["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    rec["ctf/df1_A"] = np.linspace(9000, 21000, len(paths))
    rec["ctf/df2_A"] = rec["ctf/df1_A"] - 200
    rec["alignments2D/class"] = np.arange(len(paths)) % 3
    return rec


def _save(path: Path, rec: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, rec, allow_pickle=False)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A cryoSPARC project: J12 extracted two stacks (.mrc, space group 1), J13 holds the .cs."""
    root = tmp_path / "P1"
    rng = np.random.default_rng(0)
    for name, n in (("a", 7), ("b", 3)):
        stack = write_mrc(root / "J12" / "extract" / f"{name}_particles.mrc",
                          rng.standard_normal((n, 16, 16)).astype(np.float32), apix=1.3)
        with open(stack, "r+b") as f:  # cryoSPARC marks its particle stacks with space group 1
            f.seek(88)
            f.write(np.int32(1).tobytes())
    rec = _records([b"J12/extract/a_particles.mrc"] * 4 + [b">J12/extract/b_particles.mrc"] * 2,
                   [0, 3, 6, 2, 0, 2])
    _save(root / "J13" / "J13_particles.cs", rec)
    return root


def test_read_cs_in_its_project(project: Path) -> None:
    table = read_cs(project / "J13" / "J13_particles.cs")
    assert len(table) == 6 and "ctf/df1_A" in table.fields
    paths, sections = table.image_refs()
    a = project / "J12" / "extract" / "a_particles.mrc"
    b = project / "J12" / "extract" / "b_particles.mrc"
    assert [p.resolve() for p in paths] == [a.resolve()] * 4 + [b.resolve()] * 2
    assert sections.tolist() == [0, 3, 6, 2, 0, 2] and sections.dtype == np.int64
    np.testing.assert_allclose(table.pixel_sizes(), 1.3, rtol=1e-6)
    assert inspect_mrc(a).layout == "stack"  # space group 1, 7 x 16 x 16: a particle stack
    images = read_sections(paths[0], sections[:4])
    assert images.shape == (4, 16, 16) and np.isfinite(images).all()


def test_cs_moved_away_from_its_project_needs_cs_project(project: Path, tmp_path: Path) -> None:
    moved = _save(tmp_path / "elsewhere" / "p.cs", read_cs(project / "J13" / "J13_particles.cs").records)
    with pytest.raises(BiocnnError) as exc:
        read_cs(moved).image_refs()
    assert str(exc.value) == (
        f"cs_project: needed: {moved} names particle stack J12/extract/a_particles.mrc, not found "
        "near it (blob/path is relative to the cryoSPARC project folder)"
    )
    assert exc.value.as_flag().startswith("--cs-project: needed: ")
    paths, _ = read_cs(moved, project_dir=project).image_refs()
    assert paths[0] == project / "J12" / "extract" / "a_particles.mrc"
    with pytest.raises(BiocnnError, match=r"^cs_project .*elsewhere: particle stack J12/.* not found there"):
        read_cs(moved, project_dir=tmp_path / "elsewhere").image_refs()
    with pytest.raises(BiocnnError, match="^cs_project .*nope: not a folder"):
        read_cs(moved, project_dir=tmp_path / "nope")


def test_stacks_copied_flat_into_the_project_folder(project: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a", "b"):
        (flat / f"{name}_particles.mrc").write_bytes(
            (project / "J12" / "extract" / f"{name}_particles.mrc").read_bytes())
    paths, _ = read_cs(project / "J13" / "J13_particles.cs", project_dir=flat).image_refs()
    assert paths == [flat / "a_particles.mrc"] * 4 + [flat / "b_particles.mrc"] * 2


def test_write_subset_keeps_every_field(project: Path, tmp_path: Path) -> None:
    table = read_cs(project / "J13" / "J13_particles.cs")
    out = write_cs(tmp_path / "sel" / "selected.cs", table, np.array([True, False, True, False, False, True]))
    assert sorted(x.name for x in out.parent.iterdir()) == ["selected.cs"]  # no temp, no ".npy"
    again = np.load(out, allow_pickle=False)  # what cryoSPARC (and cryosparc-tools) do
    assert again.dtype == table.records.dtype
    np.testing.assert_array_equal(again, table.records[[0, 2, 5]])
    by_index = write_cs(tmp_path / "idx.cs", table, [5, 0])
    np.testing.assert_array_equal(read_cs(by_index).records["uid"], table.records["uid"][[5, 0]])
    empty = write_cs(tmp_path / "none.cs", table, np.zeros(6, bool))
    assert len(np.load(empty)) == 0
    with pytest.raises(BiocnnError, match="row 6 out of range for 6 particles"):
        write_cs(tmp_path / "bad.cs", table, [1, 6])
    with pytest.raises(BiocnnError, match="row mask of shape"):
        write_cs(tmp_path / "bad.cs", table, np.ones(3, bool))


def test_duplicates_in_a_cs(project: Path) -> None:
    rec = _records([b"J12/extract/a_particles.mrc"] * 3 + [b">J12/extract/a_particles.mrc"], [0, 1, 0, 1])
    table = read_cs(_save(project / "J14" / "dup.cs", rec))
    assert table.duplicate_images().tolist() == [True, True, True, True]
    assert table.image_groups().tolist() == [0, 1, 0, 1]


def test_large_headers_and_missing_pixel_size(project: Path) -> None:
    """cryoSPARC headers can exceed NumPy's default 10 kB header limit."""
    many = [("blob/path", "S40"), ("blob/idx", "<u4")] + [(f"extra/field_{i:04d}", "<f4") for i in range(600)]
    rec = np.zeros(2, many)
    rec["blob/path"] = b"J12/extract/b_particles.mrc"
    rec["blob/idx"] = [0, 1]
    p = _save(project / "J15" / "wide.cs", rec)
    assert p.stat().st_size > 10_000
    table = read_cs(p)
    assert len(table.fields) == 602 and table.pixel_sizes().tolist() == [0.0, 0.0]
    assert table.image_refs()[1].tolist() == [0, 1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _save(p, np.zeros(3, [("uid", "<u8"), ("ctf/df1_A", "<f4")])),
         r"no blob/path or blob/idx field: not a particle .cs file \(a passthrough file"),
        (lambda p: p.write_bytes(b"II*\0" + b"\0" * 64), r"TIFF is not supported \(biocnn reads"),
        (lambda p: p.write_text("data_particles\nloop_\n_rlnImageName\n1@a.mrcs\n"),
         r"not a cryoSPARC .cs file \(STAR\)"),
        (lambda p: p.write_bytes(b"\x94CSDAT" + b"\0" * 64), r"compressed dataset format is not supported"),
        (lambda p: _save(p, np.zeros((2, 2), np.float32)), r"want a 1-D table of named fields"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': [(" + b" " * 40),
         r"not a readable cryoSPARC .cs file"),
    ],
)
def test_bad_cs_files(tmp_path: Path, make, message: str) -> None:
    p = tmp_path / "x.cs"
    make(p)
    with pytest.raises(BiocnnError, match=message) as exc:
        read_cs(p)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(str(p))


def test_object_fields_are_never_unpickled(tmp_path: Path) -> None:
    rec = np.zeros(2, [("blob/path", "O"), ("blob/idx", "<u4")])
    rec["blob/path"] = ["a.mrc", "b.mrc"]
    p = tmp_path / "obj.cs"
    with open(p, "wb") as f:
        np.save(f, rec, allow_pickle=True)
    with pytest.raises(BiocnnError, match="fields of Python objects are not read"):
        read_cs(p)


def test_truncated_and_missing(tmp_path: Path, project: Path) -> None:
    src = (project / "J13" / "J13_particles.cs").read_bytes()
    p = tmp_path / "cut.cs"
    p.write_bytes(src[:-10])
    with pytest.raises(BiocnnError, match=r"cut.cs: file is truncated: header says \d+ bytes, file has"):
        read_cs(p)
    with pytest.raises(BiocnnError, match="cryoSPARC file .*missing.cs not found"):
        read_cs(tmp_path / "missing.cs")


def test_index_out_of_range(project: Path) -> None:
    dtype = [("blob/path", "S40"), ("blob/idx", "<i8")]
    rec = np.zeros(2, dtype)
    rec["blob/path"] = b"J12/extract/b_particles.mrc"
    rec["blob/idx"] = [0, -3]
    with pytest.raises(BiocnnError, match=r"blob/idx -3 out of range"):
        read_cs(_save(project / "J16" / "neg.cs", rec)).image_refs()
    rec["blob/idx"] = [0, 2**40]
    with pytest.raises(BiocnnError, match=r"blob/idx 1099511627776 out of range"):
        read_cs(_save(project / "J16" / "big.cs", rec)).image_refs()
