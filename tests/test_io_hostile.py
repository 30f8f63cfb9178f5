"""Hostile and malformed input files are refused cheaply, in one line, with BiocnnError only.

Every header field is checked against the file size before anything is mapped or
allocated, so no file of at most 1 MB may make a reader allocate more than a few MB.
"""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mrcfile.dtypes import HEADER_DTYPE

from biocnn.errors import BiocnnError
from biocnn.io import mrc as mrc_mod
from biocnn.io import sniff_format
from biocnn.io.mrc import ViewSpec, inspect_mrc, iter_images

pytestmark = pytest.mark.filterwarnings("ignore::biocnn.io.mrc.MrcQuirkWarning")

#: What any refusal of a file of at most 1 MB may allocate (the issue's bound is 200 MB).
ALLOC_LIMIT = 16 << 20


def _header(**fields: object) -> bytes:
    """A little-endian MRC header: a valid 8 x 8 float32 image unless ``fields`` say otherwise."""
    h = np.zeros(1, HEADER_DTYPE).view(np.recarray)
    values = {"nx": 8, "ny": 8, "nz": 1, "mode": 2, "mx": 8, "my": 8, "mz": 1, "map": b"MAP "}
    values.update(fields)
    for name, value in values.items():
        setattr(h, name, value)
    h.machst = np.frombuffer(b"\x44\x44\0\0", np.uint8)
    return h.tobytes()


def _peak_bytes(fn: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Peak traced allocation while running ``fn`` and the exception it raised, if any."""
    mrc_mod._CACHE.clear()
    tracemalloc.start()
    try:
        fn()
        raised = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test to check its type
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


def _read_all(path: Path) -> None:
    inspect_mrc(path)
    for _ in iter_images(path, ViewSpec(slices="all", project=True), chunk=64):
        pass


@pytest.mark.parametrize(
    ("fields", "size", "message"),
    [
        ({"nsymbt": 10**9}, 97 * 1024,
         r"extended header size 1000000000 is larger than the file \(99328 bytes\)"),
        ({"nx": 2**30, "ny": 2**30, "nz": 2**30}, 97 * 1024,
         r"file is truncated: header says 4951760157141521099596497920 bytes, file has 99328"),
        ({"nx": -5}, 2048, r"header nx = -5; image sizes must be positive"),
        ({"ny": 0}, 2048, r"header ny = 0; image sizes must be positive"),
        ({"nz": -(2**31)}, 2048, r"header nz = -2147483648"),
        ({"nsymbt": -4}, 2048, r"extended header size -4 is negative"),
        ({"mode": 7}, 2048, r"mode 7 is not an MRC data mode"),
        ({"nx": 2**31 - 1, "ny": 2**31 - 1, "nz": 2**31 - 1, "mode": 4}, 4096, r"file is truncated"),
        ({"nz": 300, "mz": 300}, 1024 + 256 * 299, r"header says 77824 bytes, file has 77568"),
    ],
)
def test_hostile_headers_are_refused_before_any_allocation(
    tmp_path: Path, fields: dict, size: int, message: str
) -> None:
    p = tmp_path / "hostile.mrc"
    head = _header(**fields)
    p.write_bytes(head + b"\0" * (size - len(head)))
    peak, raised = _peak_bytes(lambda: _read_all(p))
    assert isinstance(raised, BiocnnError), raised
    text = str(raised)
    assert text.startswith(f"{p}: not a readable MRC file (") and "\n" not in text
    assert pytest.importorskip("re").search(message, text), text
    assert peak < ALLOC_LIMIT, peak


def test_unsupported_modes_refused_in_one_line(tmp_path: Path) -> None:
    for mode, nbytes in ((3, 4), (4, 8), (101, 1)):
        p = tmp_path / f"m{mode}.mrc"
        p.write_bytes(_header(mode=mode) + b"\0" * (64 * nbytes))
        with pytest.raises(BiocnnError, match=rf"m{mode}.mrc: unsupported MRC mode {mode} "):
            inspect_mrc(p)


def test_a_valid_97kb_file_reads_with_small_peak(tmp_path: Path) -> None:
    """The control: reading a valid file of the same size allocates about its pixels."""
    p = tmp_path / "ok.mrcs"
    data = np.ones((24, 32, 32), np.float32)
    p.write_bytes(_header(nx=32, ny=32, nz=24, mz=1, cella=(32.0, 32.0, 1.0)) + data.tobytes())
    peak, raised = _peak_bytes(lambda: _read_all(p))
    assert raised is None and peak < ALLOC_LIMIT


FIELD = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, 1, 2, 3, 4, 6, 12, 101, 401, 1024, 2**16, 2**30, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)

#: Mostly plausible values, so that both the reading and the refusing paths are exercised.
DIM = st.one_of(st.integers(1, 12), FIELD)
MODE = st.one_of(st.sampled_from([0, 1, 2, 6, 12]), FIELD)
NSYMBT = st.one_of(st.just(0), st.integers(0, 300), FIELD)
ISPG = st.one_of(st.sampled_from([0, 1, 19, 401]), FIELD)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    nx=DIM, ny=DIM, nz=DIM, mode=MODE, mz=DIM, ispg=ISPG, nsymbt=NSYMBT,
    cell=st.floats(allow_nan=True, allow_infinity=True, width=32),
    stamp=st.sampled_from([b"\x44\x44\0\0", b"\x11\x11\0\0", b"\0\0\0\0", b"\xff\x01\x02\x03"]),
    map_id=st.sampled_from([b"MAP ", b"\0\0\0\0", b"XXXX"]),
    body=st.one_of(st.none(), st.integers(0, 6000)),  # None: exactly what the header needs
    suffix=st.sampled_from([".mrc", ".mrcs", ".map"]),
    fill=st.sampled_from([0, 0, 0x3F, 0x7F, 0xFF]),
)
def test_random_headers_read_or_raise_biocnn_error_only(
    tmp_path: Path, nx: int, ny: int, nz: int, mode: int, mz: int, ispg: int, nsymbt: int,
    cell: float, stamp: bytes, map_id: bytes, body: int | None, suffix: str, fill: int,
) -> None:
    """Whatever the header says, a reader either reads or raises a one-line BiocnnError."""
    h = np.frombuffer(
        _header(nx=nx, ny=ny, nz=nz, mode=mode, mz=mz, ispg=ispg, nsymbt=nsymbt, map=map_id,
                cella=(cell, cell, cell)),
        HEADER_DTYPE,
    ).copy().view(np.recarray)
    h.machst = np.frombuffer(stamp, np.uint8)
    if body is None:
        itemsize = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}.get(mode, 4)
        body = max(nsymbt, 0) + max(nx, 0) * max(ny, 0) * max(nz, 0) * itemsize
        body = body if body <= 200_000 else 0
    p = tmp_path / f"random{suffix}"
    p.write_bytes(h.tobytes() + bytes([fill]) * body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak, raised = _peak_bytes(lambda: _read_all(p))
        sniff_format(p)
    event("refused" if raised is not None else "read")
    if raised is not None:
        assert isinstance(raised, BiocnnError), repr(raised)
        assert "\n" not in str(raised) and str(p) in str(raised)
    assert peak < ALLOC_LIMIT, peak


# --- STAR and cryoSPARC tables -----------------------------------------------------------------

STAR_LINES = st.sampled_from([
    "data_", "data_particles", "data_optics", "data_images", "loop_", "_rlnImageName #1",
    "_rlnOpticsGroup #2", "_rlnImagePixelSize #3", "_rlnClassNumber", "_rlnDetectorPixelSize",
    "_rlnMagnification", "# version 30001", "", "   ", "1@a.mrcs 1 2.5", "000002@a.mrcs", "a.mrc 1",
    "12345678901234567890@a.mrcs 1 1", "0@a.mrcs", "'1@my stack.mrcs' 1 1.0", '"', "'", "1 1 nan",
    "x y z", "1 inf -3", "data_particles extra", "_rlnImagePixelSize 1.5", "@", "1@", "١@a.mrcs 1",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.one_of(STAR_LINES, st.text(max_size=30)), max_size=40),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
    tail=st.binary(max_size=16),
)
def test_random_star_files_read_or_raise_biocnn_error_only(
    tmp_path: Path, lines: list[str], encoding: str, tail: bytes
) -> None:
    from biocnn.io.star import read_star

    p = tmp_path / "random.star"
    p.write_bytes("\n".join(lines).encode(encoding, "replace") + tail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = read_star(p)
            table.image_refs()
            table.pixel_sizes()
            table.duplicate_images()
            table.pixel_size_mismatches({})
            outcome = "read"
        except BiocnnError as exc:
            assert "\n" not in str(exc)
            outcome = "refused"
    event(outcome)


def _cs_bytes(tmp_path: Path) -> bytes:
    rec = np.zeros(3, [("uid", "<u8"), ("blob/path", "S16"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4")])
    rec["blob/path"] = b"J1/a.mrc"
    rec["blob/idx"] = [0, 1, 2]
    rec["blob/psize_A"] = 1.2
    p = tmp_path / "seed.cs"
    with open(p, "wb") as f:
        np.save(f, rec)
    return p.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 250)),
)
def test_corrupted_cs_files_read_or_raise_biocnn_error_only(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    from biocnn.io.cs import read_cs

    raw = bytearray(_cs_bytes(tmp_path))
    for pos, value in edits:
        if pos < len(raw):
            raw[pos] = value
    p = tmp_path / "corrupt.cs"
    p.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    (tmp_path / "J1").mkdir(exist_ok=True)
    (tmp_path / "J1" / "a.mrc").write_bytes(b"")
    peak, raised = _peak_bytes(lambda: _use_cs(read_cs(p)))
    event("refused" if raised is not None else "read")
    if raised is not None:
        assert isinstance(raised, BiocnnError), repr(raised)
        assert "\n" not in str(raised)
    assert peak < ALLOC_LIMIT


def _use_cs(table: object) -> None:
    table.image_refs()  # type: ignore[attr-defined]
    table.pixel_sizes()  # type: ignore[attr-defined]
    table.duplicate_images()  # type: ignore[attr-defined]


def test_cs_header_claiming_a_huge_table(tmp_path: Path) -> None:
    """A 1 kB .cs whose header says 10^12 rows is refused before mapping or allocating."""
    from biocnn.io.cs import read_cs

    raw = _cs_bytes(tmp_path).replace(b"'shape': (3,)", b"'shape': (1000000000000,)", 1)
    p = tmp_path / "huge.cs"
    p.write_bytes(raw)
    peak, raised = _peak_bytes(lambda: read_cs(p))
    assert isinstance(raised, BiocnnError) and "file is truncated" in str(raised)
    assert peak < ALLOC_LIMIT


HOSTILE_STAR = {
    "3000 columns": (lambda: "data_particles\nloop_\n" + "".join(f"_c{i}\n" for i in range(3000)) + "1\n",
                     r"has 3000 columns \(at most 2000 are read\)"),
    "900 kB name": (lambda: "data_particles\nloop_\n_rlnImageName\n" + "a" * 900_000 + "\n", "is too long"),
    "900 kB of quotes": (lambda: "data_particles\nloop_\n_rlnImageName\n" + '"' * 900_001 + "\n",
                         "values with spaces must be quoted"),
    "60000 values": (lambda: "data_x\n" + "".join(f"_k{i} {i}\n" for i in range(60_000)),
                     "has more than 2000 values"),
    "20000 blocks": (lambda: "".join(f"data_{i}\nloop_\n_rlnImageName\n1@a.mrcs\n" for i in range(20_000)),
                     r"no particle block with rlnImageName \(blocks: '0', '1', .*, \.\.\.\)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_STAR))
def test_hostile_star_files_are_refused_cheaply(tmp_path: Path, case: str) -> None:
    import re

    from biocnn.io.star import read_star

    make, message = HOSTILE_STAR[case]
    p = tmp_path / "hostile.star"
    p.write_text(make())
    assert p.stat().st_size <= 1 << 20
    peak, raised = _peak_bytes(lambda: read_star(p).image_refs())
    assert isinstance(raised, BiocnnError) and re.search(message, str(raised)), raised
    assert len(str(raised)) < 500 and peak < 200 << 20
