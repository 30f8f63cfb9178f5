"""MRC readers: layout rule, volume views, per-process handles, chunked iteration, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from biocnn.errors import BiocnnError
from biocnn.io import mrc as mrc_mod
from biocnn.io.mrc import (
    ViewKind,
    ViewSpec,
    inspect_mrc,
    iter_images,
    open_mrc,
    read_view,
    write_mrc,
)


def _raw_mrc(path: Path, data: np.ndarray, ispg: int | None = None, apix: float = 0.0) -> Path:
    """Write with mrcfile directly (mrcfile marks 3D data as a volume, ispg 1, by default)."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if ispg is not None:
            m.header.ispg = ispg
        m.voxel_size = apix
    return path


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((10, 12, 14)).astype(np.float32)


# --- layout rule -------------------------------------------------------------------------


def test_inspect_single_image(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "img.mrc", np.ones((16, 20)), apix=2.5)
    info = inspect_mrc(p)
    assert (info.layout, info.shape, info.apix, info.mode) == ("image", (1, 16, 20), 2.5, 2)


@pytest.mark.parametrize(
    ("name", "ispg", "as_volume", "layout"),
    [
        ("a.mrcs", 1, None, "stack"),  # .mrcs is a stack whatever the header says
        ("a.mrc", 0, None, "stack"),  # ispg 0: image stack
        ("a.mrc", 1, None, "volume"),  # mrcfile's default for 3D data
        ("a.map", 0, None, "volume"),  # .map is a volume
        ("a.mrc", 1, False, "stack"),  # explicit override
        ("a.mrcs", 0, True, "volume"),
    ],
)
def test_layout_rule(
    tmp_path: Path, name: str, ispg: int, as_volume: bool | None, layout: str
) -> None:
    p = _raw_mrc(tmp_path / name, np.zeros((3, 8, 8), np.float32), ispg=ispg)
    assert inspect_mrc(p, as_volume=as_volume).layout == layout


def test_int16_mode_reads_as_float32(tmp_path: Path) -> None:
    data = np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8)
    p = _raw_mrc(tmp_path / "ints.mrcs", data)
    img = read_view(p, ViewKind.IMAGE, 2)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, data[2])


# --- views -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ViewSpec(), [(ViewKind.SLICE, 5)]),
        (ViewSpec(slices="all"), [(ViewKind.SLICE, k) for k in range(10)]),
        (ViewSpec(slices=3), [(ViewKind.SLICE, k) for k in (2, 4, 7)]),
        (ViewSpec(slices="3"), [(ViewKind.SLICE, k) for k in (2, 4, 7)]),
        (ViewSpec(slices=50), [(ViewKind.SLICE, k) for k in range(10)]),
        (ViewSpec(slices="none", project=True), [(ViewKind.PROJECTION, 0)]),
        (ViewSpec(slice_axis="x", project=True), [(ViewKind.SLICE, 7), (ViewKind.PROJECTION, 0)]),
    ],
)
def test_view_lists(tmp_path: Path, volume: np.ndarray, spec: ViewSpec, expected: list) -> None:
    info = inspect_mrc(write_mrc(tmp_path / "v.map", volume))
    assert spec.views(info) == expected


@pytest.mark.parametrize(("axis", "shape"), [("z", (12, 14)), ("y", (10, 14)), ("x", (10, 12))])
def test_slices_and_projections_match_numpy(
    tmp_path: Path, volume: np.ndarray, axis: str, shape: tuple[int, int]
) -> None:
    p = write_mrc(tmp_path / "v.map", volume)
    spec = ViewSpec(slice_axis=axis, slices="all", project=True)
    info = inspect_mrc(p)
    assert spec.image_shape(info) == shape
    views = spec.views(info)
    a = spec.axis
    for kind, k in views[:-1]:
        np.testing.assert_array_equal(read_view(p, kind, k, axis), np.take(volume, k, axis=a))
    proj = read_view(p, *views[-1], axis)
    np.testing.assert_allclose(proj, volume.sum(axis=a), rtol=1e-5, atol=1e-5)
    assert spec.name(info, *views[-1]).endswith(f"v.map:sum_{axis}")


def test_stack_images_are_copies(tmp_path: Path) -> None:
    data = np.random.default_rng(2).standard_normal((4, 8, 8)).astype(np.float32)
    p = write_mrc(tmp_path / "s.mrcs", data, is_stack=True)
    img = read_view(p, ViewKind.IMAGE, 3)
    np.testing.assert_array_equal(img, data[3])
    assert img.flags.writeable and not isinstance(img, np.memmap) and img.base is None
    assert ViewSpec().name(inspect_mrc(p), ViewKind.IMAGE, 3) == f"000004@{p}"


def test_view_spec_round_trip_and_validation() -> None:
    spec = ViewSpec(slice_axis="y", slices=4, project=True, as_volume=True)
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    for bad in ({"slice_axis": "w"}, {"slices": "middle"}, {"slices": 0}, {"slices": "none"}):
        with pytest.raises(BiocnnError):
            ViewSpec(**bad)
    with pytest.raises(BiocnnError, match="unknown view option"):
        ViewSpec.from_dict({"slice_axes": "z"})


# --- chunked iteration ---------------------------------------------------------------------


def test_iter_images_stack_in_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(3).standard_normal((7, 8, 8)).astype(np.float32)
    p = write_mrc(tmp_path / "s.mrcs", data, apix=1.2, is_stack=True)
    chunks = list(iter_images(p, chunk=3))
    assert [len(i) for i, _ in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in chunks]), np.arange(7))
    np.testing.assert_array_equal(np.concatenate([a for _, a in chunks]), data)
    assert all(a.dtype == np.float32 for _, a in chunks)


def test_iter_images_volume_views_and_unknown_apix_warning(
    tmp_path: Path, volume: np.ndarray
) -> None:
    p = write_mrc(tmp_path / "v.mrc", volume)  # apix 0
    with pytest.warns(UserWarning, match="pixel size unknown"):
        chunks = list(iter_images(p, ViewSpec(slices=2, project=True), chunk=2))
    idx = np.concatenate([i for i, _ in chunks])
    arr = np.concatenate([a for _, a in chunks])
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_array_equal(arr[1], volume[6])
    np.testing.assert_allclose(arr[2], volume.sum(0), rtol=1e-5, atol=1e-5)


# --- per-process handle cache ----------------------------------------------------------------


def test_handle_cache_reuses_reopens_after_fork_and_sees_replaced_files(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "s.mrcs", np.zeros((2, 8, 8)), is_stack=True)
    first = open_mrc(p)
    assert open_mrc(p) is first
    mrc_mod._CACHE.pid = -1  # what a forked DataLoader worker sees: a different pid
    second = open_mrc(p)
    assert second is not first and mrc_mod._CACHE.pid == os.getpid()
    write_mrc(p, np.ones((3, 8, 8)), is_stack=True)  # atomically replaced on disk
    assert read_view(p, ViewKind.IMAGE, 2).mean() == 1.0


def test_handle_cache_is_bounded(tmp_path: Path) -> None:
    for i in range(mrc_mod._CACHE_SIZE + 5):
        open_mrc(write_mrc(tmp_path / f"{i}.mrc", np.zeros((8, 8))))
    assert len(mrc_mod._CACHE.handles) == mrc_mod._CACHE_SIZE


# --- bad input ---------------------------------------------------------------------------


def test_not_an_mrc_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.mrc"
    p.write_bytes(b"this is not an MRC file" * 100)
    with pytest.raises(BiocnnError, match="notes.mrc: not a readable MRC file") as exc:
        inspect_mrc(p)
    assert "\n" not in str(exc.value)


def test_permissive_mode_tolerates_a_bad_map_id(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "odd.mrcs", np.ones((2, 8, 8)), is_stack=True)
    raw = bytearray(p.read_bytes())
    raw[208:212] = b"XXXX"  # the "MAP " identifier
    p.write_bytes(bytes(raw))
    with pytest.raises(BiocnnError, match="odd.mrcs: not a readable MRC file"):
        inspect_mrc(p)
    assert inspect_mrc(p, permissive=True).shape == (2, 8, 8)
    assert read_view(p, ViewKind.IMAGE, 1, permissive=True).sum() == 64


def test_truncated_mrc(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "cut.mrcs", np.zeros((4, 16, 16)), is_stack=True)
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(BiocnnError, match="cut.mrcs: not a readable MRC file"):
        inspect_mrc(p)
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"\0" * 100)
    with pytest.raises(BiocnnError, match="tiny.mrc"):
        inspect_mrc(tiny)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="nope.mrc"):
        inspect_mrc(tmp_path / "nope.mrc")


def test_complex_modes_rejected(tmp_path: Path) -> None:
    p4 = _raw_mrc(tmp_path / "c4.mrc", np.zeros((8, 8), np.complex64))
    with pytest.raises(BiocnnError, match="c4.mrc: unsupported MRC mode 4"):
        inspect_mrc(p4)
    p3 = write_mrc(tmp_path / "c3.mrc", np.zeros((8, 8)))  # mode 3 has float32's size
    with mrcfile.open(p3, "r+") as m:
        m.header.mode = 3
    with pytest.raises(BiocnnError, match="c3.mrc: .*mode '?3"):
        inspect_mrc(p3)


def test_volume_stack_rejected(tmp_path: Path) -> None:
    p = _raw_mrc(tmp_path / "vs.mrc", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(BiocnnError, match="vs.mrc: 4D data"):
        inspect_mrc(p)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header statistics on NaN
def test_nan_pixels_reported_per_image(tmp_path: Path, volume: np.ndarray) -> None:
    data = np.zeros((5, 8, 8), np.float32)
    data[3, 2, 2] = np.nan
    p = write_mrc(tmp_path / "nan.mrcs", data, apix=1.0, is_stack=True)
    read_view(p, ViewKind.IMAGE, 2)  # clean images of the stack stay readable
    with pytest.raises(BiocnnError, match="nan.mrcs: image 4 contains NaN or Inf"):
        read_view(p, ViewKind.IMAGE, 3)
    with pytest.raises(BiocnnError, match="nan.mrcs: image 4 contains NaN or Inf"):
        list(iter_images(p, chunk=2))
    volume[0, 0, 0] = np.inf
    v = write_mrc(tmp_path / "inf.map", volume)
    read_view(v, ViewKind.SLICE, 5)
    with pytest.raises(BiocnnError, match="inf.map: the projection along z contains NaN or Inf"):
        read_view(v, ViewKind.PROJECTION, 0)


def test_out_of_range_views(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "s.mrcs", np.zeros((2, 8, 8)), is_stack=True)
    with pytest.raises(BiocnnError, match="image index 3 out of range"):
        read_view(p, ViewKind.IMAGE, 2)
    img = write_mrc(tmp_path / "i.mrc", np.zeros((8, 8)))
    with pytest.raises(BiocnnError, match="no volume slices"):
        read_view(img, ViewKind.SLICE, 0)
