"""MRC readers: layout rule, volume views, per-process handles, chunked iteration, bad input."""

from __future__ import annotations

import io
import os
import warnings
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
    read_sections,
    read_view,
    write_mrc,
)

# files written without a pixel size warn once each; the tests that count warnings record them
pytestmark = pytest.mark.filterwarnings("ignore::biocnn.io.mrc.MrcQuirkWarning")


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
        ("a.mrc", 1, None, "stack"),  # ispg 1 but a particle-like 3 x 8 x 8 shape
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
    p = write_mrc(tmp_path / "v.map", volume)  # apix 0
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


def test_a_bad_map_id_is_read_with_one_warning(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "odd.mrcs", np.ones((2, 8, 8)), apix=1.0, is_stack=True)
    raw = bytearray(p.read_bytes())
    raw[208:212] = b"XXXX"  # the "MAP " identifier
    p.write_bytes(bytes(raw))
    with pytest.warns(mrc_mod.MrcQuirkWarning, match=r"odd.mrcs: .*no 'MAP ' id string") as rec:
        assert inspect_mrc(p).shape == (2, 8, 8)
        assert read_view(p, ViewKind.IMAGE, 1).sum() == 64
    assert len(rec) == 1


def test_truncated_mrc(tmp_path: Path) -> None:
    p = write_mrc(tmp_path / "cut.mrcs", np.zeros((4, 16, 16)), is_stack=True)
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(BiocnnError, match="cut.mrcs: not a readable MRC file .file is truncated: "
                       r"header says 5120 bytes, file has 4920\)"):
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


# --- headers as the field's tools write them ------------------------------------------------

REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "data" / "realworld"
TYPES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}


def _mrc_file(
    path: Path,
    data: np.ndarray,
    *,
    mode: int = 2,
    ispg: int = 0,
    mz: int | None = None,
    apix: float = 1.5,
    map_id: bytes = b"MAP ",
    stamp: bytes = b"\x44\x44\x00\x00",
    order: str = "<",
    ext: bytes = b"",
    stats: tuple[float, float, float, float] = (-1.0, -2.0, -3.0, -1.0),
    imod_flags: int | None = None,
) -> Path:
    """Write ``data`` ``(Z, Y, X)`` behind a header built field by field (mrcfile's layout)."""
    from mrcfile.dtypes import HEADER_DTYPE

    nz, ny, nx = data.shape
    h = np.zeros(1, HEADER_DTYPE.newbyteorder(order)).view(np.recarray)
    h.nx, h.ny, h.nz, h.mode = nx, ny, nz, mode
    h.mx, h.my, h.mz = nx, ny, nz if mz is None else mz
    h.cella.x, h.cella.y, h.cella.z = apix * nx, apix * ny, apix * h.mz[0]
    h.cellb.alpha = h.cellb.beta = h.cellb.gamma = 90.0
    h.mapc, h.mapr, h.maps = 1, 2, 3
    h.dmin, h.dmax, h.dmean, h.rms = stats
    h.ispg, h.nsymbt = ispg, len(ext)
    h.map = map_id
    h.machst = np.frombuffer(stamp, np.uint8)
    raw = bytearray(h.tobytes())
    if imod_flags is not None:  # IMOD's stamp and flags live in the "extra" bytes 152..160
        raw[152:160] = np.array([1146047817, imod_flags], order + "i4").tobytes()
    path.write_bytes(bytes(raw) + ext + data.astype(order + TYPES[mode]).tobytes())
    return path


def _stack(n: int = 7, box: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, box, box)).astype(np.float32)


WRITERS = {
    # RELION: .mrcs, space group 0, MAP id, stamp 0x44 0x44, mz = nz
    "relion": dict(name="p.mrcs", kw={}, quirk=None),
    # cryoSPARC: particle stacks named .mrc with space group 1 and mz = nz, stamp 0x44 0x41
    "cryosparc": dict(name="p.mrc", kw={"ispg": 1, "stamp": b"\x44\x41\x00\x00"}, quirk=None),
    # cryosparc-tools: space group 0, mx/my/mz = nx/ny/nz
    "cryosparc-tools": dict(name="p.mrc", kw={"stamp": b"\x44\x41\x00\x00"}, quirk=None),
    # EMAN2: image stack marked with mz = 1
    "eman2": dict(name="p.mrcs", kw={"mz": 1, "stats": (0.0, 1.0, 0.5, 0.3)}, quirk=None),
    # IMOD: int16 with an extended header and IMOD's stamp, space group 0
    "imod": dict(name="p.mrc", kw={"mode": 1, "ext": b"\0" * 1024, "imod_flags": 1}, quirk=None),
    # older tools: no MAP id, zero stamp, statistics left at -1 (what relion31.mrcs has)
    "old": dict(name="p.mrcs", kw={"map_id": b"\0" * 4, "stamp": b"\0" * 4}, quirk="no 'MAP ' id"),
    # a big-endian writer with a proper stamp
    "big-endian": dict(name="p.mrcs", kw={"order": ">", "stamp": b"\x11\x11\x00\x00"}, quirk=None),
    # big-endian data with a zero stamp: the byte order is the one where the header makes sense
    "big-endian-no-stamp": dict(name="p.mrcs", kw={"order": ">", "stamp": b"\0" * 4},
                                quirk="read as big-endian"),
    # non-finite header statistics
    "nan-stats": dict(name="p.mrcs", kw={"stats": (np.nan, np.inf, 0.0, np.nan)}, quirk="non-finite"),
    # zero cell
    "zero-cell": dict(name="p.mrcs", kw={"apix": 0.0}, quirk="pixel size unknown"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_headers_of_the_fields_writers_read_as_stacks(tmp_path: Path, writer: str) -> None:
    case = WRITERS[writer]
    data = _stack()
    mode = case["kw"].get("mode", 2)
    if mode == 1:
        data = np.round(data * 100)
    p = _mrc_file(tmp_path / case["name"], data, **case["kw"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        info = inspect_mrc(p)
        images = np.concatenate([a for _, a in iter_images(p, chunk=3)])
        read_sections(p, [6, 0])
    assert (info.layout, info.shape) == ("stack", (7, 16, 16)), info.reason
    np.testing.assert_array_equal(images, data)
    quirks = [w for w in rec if issubclass(w.category, mrc_mod.MrcQuirkWarning)]
    if case["quirk"] is None:
        assert not quirks, [str(w.message) for w in quirks]
    else:
        assert len(quirks) == 1 and case["quirk"] in str(quirks[0].message)
        assert str(p) in str(quirks[0].message) and "\n" not in str(quirks[0].message)
    assert info.apix == (0.0 if writer == "zero-cell" else 1.5)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
def test_every_mode_in_both_byte_orders_reads_as_float32(tmp_path: Path, mode: int, order: str) -> None:
    values = np.arange(2 * 4 * 6).reshape(2, 4, 6) - (0 if mode == 6 else 20)
    data = values.astype(TYPES[mode])
    stamp = b"\x44\x44\0\0" if order == "<" else b"\x11\x11\0\0"
    p = _mrc_file(tmp_path / "m.mrcs", data, mode=mode, order=order, stamp=stamp)
    out = read_sections(p, [0, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_imod_unsigned_bytes(tmp_path: Path) -> None:
    """IMOD marks signed bytes with bit 0 of its flags; without it, mode 0 is unsigned."""
    raw = np.array([[[0, 100, 200, 255]]], np.uint8)
    p = _mrc_file(tmp_path / "u.mrc", raw.view(np.int8), mode=0, imod_flags=0)
    np.testing.assert_array_equal(read_sections(p, [0])[0], raw[0])
    s = _mrc_file(tmp_path / "s.mrc", raw.view(np.int8), mode=0, imod_flags=1)
    np.testing.assert_array_equal(read_sections(s, [0])[0], raw[0].view(np.int8))


@pytest.mark.parametrize(
    ("name", "shape", "kw", "as_volume", "layout"),
    [
        ("a.mrc", (7, 64, 64), {"ispg": 1}, None, "stack"),  # issue 13: a 7-image stack, ispg 1
        ("a.mrc", (64, 16, 16), {"ispg": 1}, None, "stack"),  # more images than pixels a side
        ("a.mrc", (16, 16, 16), {"ispg": 1}, None, "volume"),  # cubic, volume header
        ("a.mrc", (16, 16, 16), {"ispg": 1, "mz": 1}, None, "stack"),  # mz = 1: image stack
        ("a.mrc", (16, 16, 16), {"ispg": 0}, None, "stack"),  # space group 0: images
        ("a.mrcs", (16, 16, 16), {"ispg": 1}, None, "stack"),  # RELION's suffix wins
        ("a.map", (7, 64, 64), {"ispg": 0}, None, "volume"),  # CCP4 map suffix
        ("a.mrc", (8, 16, 16), {"ispg": 401, "mz": 8}, None, "volume"),  # one-volume stack header
        ("a.mrc", (8, 16, 20), {"ispg": 19}, None, "volume"),  # crystallographic space group
        ("a.mrc", (8, 16, 16), {"ispg": 999}, None, "stack"),  # invalid space group, shape rule
        ("a.mrc", (7, 64, 64), {"ispg": 1}, True, "volume"),  # --volume
        ("a.map", (16, 16, 16), {"ispg": 1}, False, "stack"),  # --stack
        ("a.mrcs", (1, 16, 16), {"ispg": 0}, None, "image"),  # one section
    ],
)
def test_stack_or_volume_from_header_and_name(
    tmp_path: Path, name: str, shape: tuple, kw: dict, as_volume: bool | None, layout: str
) -> None:
    p = _mrc_file(tmp_path / name, np.zeros(shape, np.float32), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mrc_mod.MrcQuirkWarning)
        info = inspect_mrc(p, as_volume=as_volume)
    assert info.layout == layout and info.reason
    assert len(ViewSpec(as_volume=as_volume).views(info)) == (1 if layout != "stack" else shape[0])


def test_volume_stack_header_with_several_volumes_is_refused(tmp_path: Path) -> None:
    p = _mrc_file(tmp_path / "vs.mrc", np.zeros((16, 8, 8), np.float32), ispg=401, mz=8)
    with pytest.raises(BiocnnError, match=r"vs.mrc: 4D data \(a stack of 2 volumes"):
        inspect_mrc(p)


def test_one_quirk_warning_per_file(tmp_path: Path) -> None:
    data = _stack(3)
    a = _mrc_file(tmp_path / "a.mrcs", data, map_id=b"\0" * 4, stamp=b"\0" * 4, apix=0.0)
    b = _mrc_file(tmp_path / "b.mrcs", data, map_id=b"\0" * 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            for p in (a, b):
                inspect_mrc(p)
                read_sections(p, [1])
                list(iter_images(p))
        mrc_mod._CACHE.clear()  # reopening in the same process does not warn again
        inspect_mrc(a)
    messages = sorted(str(w.message) for w in rec)
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{a}: MRC header quirks accepted: machine stamp 00 00 00 00")
    assert "no 'MAP ' id string" in messages[0] and "pixel size unknown" in messages[0]
    assert messages[1] == f"{b}: MRC header quirks accepted: no 'MAP ' id string"


def test_trailing_bytes_are_a_quirk_not_an_error(tmp_path: Path) -> None:
    p = _mrc_file(tmp_path / "t.mrcs", _stack(2))
    p.write_bytes(p.read_bytes() + b"\0" * 100)
    with pytest.warns(mrc_mod.MrcQuirkWarning, match="100 bytes after the data"):
        np.testing.assert_array_equal(read_sections(p, [0, 1]), _stack(2))


@pytest.mark.parametrize(
    ("head", "name", "what"),
    [
        (b"II*\0" + b"\0" * 2000, "movie.tif", "TIFF"),
        (b"MM\0*" + b"\0" * 2000, "movie.tiff", "TIFF"),
        (b"II*\0" + b"\0" * 2000, "movie.eer", "EER"),
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 2000, "particles.hdf", "HDF5"),
        (b"\x1f\x8b\x08" + b"\0" * 2000, "map.mrc.gz", "gzip"),
        (b"", "empty.mrc", "empty"),
    ],
)
def test_other_formats_are_refused_naming_what_is_supported(
    tmp_path: Path, head: bytes, name: str, what: str
) -> None:
    from biocnn.io import sniff_format

    p = tmp_path / name
    p.write_bytes(head)
    assert sniff_format(p) in ("tiff", "eer", "hdf5", "gzip", "empty")
    with pytest.raises(BiocnnError) as exc:
        inspect_mrc(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: ") and what in msg and "\n" not in msg
    assert "biocnn reads MRC .mrc/.mrcs/.map, RELION .star, cryoSPARC .cs" in msg


def test_tables_given_as_images_are_named(tmp_path: Path) -> None:
    star = tmp_path / "p.mrc"
    star.write_text("data_particles\nloop_\n_rlnImageName #1\n1@s.mrcs\n" + "#" * 2000)
    with pytest.raises(BiocnnError, match=r"p.mrc: STAR file, not an MRC image file"):
        inspect_mrc(star)
    cs = tmp_path / "p.mrcs"
    with open(cs, "wb") as f:
        np.save(f, np.zeros(300, [("uid", "<u8")]))
    with pytest.raises(BiocnnError, match=r"p.mrcs: cryoSPARC .cs \(NumPy\) file, not an MRC image file"):
        inspect_mrc(cs)


def test_sniff_recognises_our_formats(tmp_path: Path) -> None:
    from biocnn.io import sniff_format

    stack = write_mrc(tmp_path / "s.mrcs", _stack(2), apix=1.0, is_stack=True)
    old = _mrc_file(tmp_path / "o.mrcs", _stack(2), map_id=b"\0" * 4, stamp=b"\0" * 4)
    star = tmp_path / "p.star"
    star.write_text("\n# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n1@s.mrcs\n")
    cs = tmp_path / "p.cs"
    with open(cs, "wb") as f:
        np.save(f, np.zeros(2, [("uid", "<u8")]))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    kinds = [sniff_format(p) for p in (stack, old, star, cs, text)]
    assert kinds == ["mrc", "mrc", "star", "cs", "unknown"]


@pytest.mark.skipif(not (REALWORLD / "relion31.mrcs").is_file(), reason="no ../shared real-world data")
def test_real_relion31_stack_reads_with_one_warning() -> None:
    """5 real 256 x 256 images whose header has no MAP id and a zero machine stamp."""
    p = REALWORLD / "relion31.mrcs"
    mrc_mod._WARNED.clear()
    mrc_mod._CACHE.clear()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        info = inspect_mrc(p)
        images = np.concatenate([a for _, a in iter_images(p)])
    assert (info.layout, info.shape, info.apix, info.mode) == ("stack", (5, 256, 256), 1.0, 2)
    assert [str(w.message) for w in rec] == [
        f"{p}: MRC header quirks accepted: machine stamp 00 00 00 00 (read as little-endian); "
        "no 'MAP ' id string"
    ]
    assert images.shape == (5, 256, 256) and np.isfinite(images).all() and images.std() > 0


@pytest.mark.parametrize(("shape", "is_stack", "volume", "stack"),
                         [((5, 4), False, False, False), ((3, 5, 4), True, False, True),
                          ((3, 5, 4), False, True, False)])
def test_write_mrc_is_valid_mrc2014_for_mrcfile(
    tmp_path: Path, shape: tuple[int, ...], is_stack: bool, volume: bool, stack: bool
) -> None:
    data = np.random.default_rng(0).standard_normal(shape)  # float64 in, float32 out
    p = write_mrc(tmp_path / "x.mrc", data, apix=1.5, is_stack=is_stack)
    assert mrcfile.validate(str(p), print_file=io.StringIO())
    with mrcfile.open(p) as m:
        assert (m.is_volume(), m.is_image_stack()) == (volume, stack)
        assert m.voxel_size.x == 1.5 and m.data.dtype == np.float32
        np.testing.assert_array_equal(m.data, data.astype(np.float32))
        assert float(m.header.rms) == pytest.approx(float(data.astype(np.float32).std()), rel=1e-5)
    with pytest.raises(BiocnnError, match="4D array"):
        write_mrc(tmp_path / "y.mrc", np.zeros((2, 2, 2, 2)))
