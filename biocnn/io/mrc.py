"""MRC files: validated, memory-mapped readers for images, stacks and volumes; atomic writer.

Reading follows what the field's tools (RELION, cryoDRGN, mrcfile in permissive mode)
accept, while refusing cheaply what cannot be right:

* The 1024-byte header is parsed with NumPy and checked against the file size **before**
  anything is mapped or allocated: non-positive ``nx``/``ny``/``nz``, a negative or
  oversized extended header (``nsymbt``), unknown, complex or packed modes, and data that
  do not fit the file (``file is truncated: header says N bytes, file has M``) are one-line
  :class:`BiocnnError`. So a hostile header never makes us allocate more than the header.
* Header *quirks* that older and non-conforming writers leave are accepted with exactly one
  one-line :class:`MrcQuirkWarning` per file and process: no ``MAP`` id string, a zero or
  unknown machine stamp (the byte order is then the one in which the header makes sense),
  a stamp contradicting the header, non-finite min/max/mean/rms, a zero or missing cell
  (pixel size unknown), an invalid space group, and bytes after the data.
* Modes 0 (int8; uint8 for IMOD files without its signed-bytes flag), 1 (int16), 2
  (float32), 6 (uint16) and 12 (float16), in either byte order, read as float32.

The data are mapped read-only with :mod:`mmap` and pixels are copied out one image (or one
batch) at a time, so a stack larger than RAM is read without loading it (the mapped pages
are clean file pages the kernel can drop). Open handles live in a small per-process LRU
cache that is rebuilt after a ``fork`` (each DataLoader worker maps its own files) and that
notices a file replaced on disk.

Layout rule
-----------
A file with one section (``nz == 1``) is one **image**. Otherwise, the first rule that
applies decides (``MrcInfo.layout`` and ``MrcInfo.reason`` say which was used):

1. ``ViewSpec.as_volume`` / ``inspect_mrc(as_volume=...)`` when not None (the CLI's
   ``--volume`` / ``--stack``; every file reached through a STAR ``index@file`` is read with
   ``as_volume=False``);
2. a ``.mrcs`` name: a **stack** (RELION's convention, whatever the header says);
3. space group 401-630 (a volume stack header holding one volume): a **volume**; more than
   one volume (``nz > mz``) is refused, as 4D data are not supported;
4. a ``.map`` name: a **volume** (the CCP4 map suffix);
5. space group 0: a **stack** (MRC2014 images / image stacks);
6. space groups 2-230 (crystallographic maps): a **volume**;
7. space group 1, or an invalid one: a **volume** only for a cubic block (``nz == ny ==
   nx``) not marked as an image stack (``mz == 1``); a particle-like shape (e.g. 7 x 64 x
   64, as cryoSPARC writes particle stacks named ``.mrc`` with space group 1) is a
   **stack**.

A stack yields one image per section. A volume yields 2D views chosen by
:class:`ViewSpec`: slices perpendicular to ``slice_axis`` and/or the projection (sum)
along it.
"""

from __future__ import annotations

import mmap
import os
import struct
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from biocnn.config import DictConfig
from biocnn.errors import BiocnnError, OptionError
from biocnn.io import FORMAT_NAMES, refuse_unsupported, sniff_bytes
from biocnn.io.writers import write_mrc  # the MRC writer lives with the other writers

__all__ = [
    "MRC_SUFFIXES",
    "ViewKind",
    "ViewSpec",
    "MrcInfo",
    "MrcHandle",
    "MrcQuirkWarning",
    "inspect_mrc",
    "open_mrc",
    "read_view",
    "read_sections",
    "check_sections",
    "view_name",
    "iter_images",
    "write_mrc",
]

#: File name suffixes recognised as MRC files when scanning folders (case-insensitive).
MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".map")

#: MRC modes that can be read as real pixels and their NumPy types (byte order added).
_MODE_TYPES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2"}
#: Bytes per pixel of every MRC mode, read or not (101 = 4-bit packed, half a byte).
_MODE_BYTES: dict[int, float] = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 0.5}
_HEADER_BYTES = 1024
_IMOD_STAMP = 1146047817  #: IMOD's header stamp; bit 0 of its flags marks signed bytes
_AXES = ("z", "y", "x")
_CACHE_SIZE = 32

Layout = Literal["image", "stack", "volume"]


class MrcQuirkWarning(UserWarning):
    """An MRC header defect that was tolerated (warned once per file and process)."""


class ViewKind(IntEnum):
    """How a 2D image is taken from a file."""

    IMAGE = 0  #: section ``k`` of a 2D image (k = 0) or of a stack
    SLICE = 1  #: slice ``k`` of a volume, perpendicular to the slice axis
    PROJECTION = 2  #: sum of a volume along the slice axis (section unused, 0)


@dataclass(frozen=True)
class MrcInfo:
    """Header summary of one MRC file (no pixels are read).

    Attributes
    ----------
    path
        The file.
    layout
        ``"image"``, ``"stack"`` or ``"volume"`` (see the module docstring for the rule).
    shape
        ``(N, Y, X)``: ``N = 1`` for an image, the number of images of a stack, or the
        number of Z sections of a volume.
    apix
        Pixel size in Å from the header (``cella.x / mx``, rounded to 1e-5 Å); 0 = unknown.
    mode
        MRC data mode.
    reason
        Why the layout was chosen, for messages (e.g. ``".mrcs name"``).
    quirks
        Header defects that were tolerated (each warned about once).
    """

    path: Path
    layout: Layout
    shape: tuple[int, int, int]
    apix: float
    mode: int
    reason: str = ""
    quirks: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ViewSpec(DictConfig):
    """Which 2D images a file yields; stored in checkpoints so prediction matches training.

    Images and stacks always yield all their sections; the fields below only matter for
    volumes (except ``as_volume``, which decides what a 3D file is).

    Attributes
    ----------
    slice_axis
        ``"z"``, ``"y"`` or ``"x"``: slices are perpendicular to it, projections sum along it.
    slices
        ``"central"`` (section ``n // 2``), ``"all"``, ``"none"``, or an int ``K >= 1``:
        ``K`` evenly spaced interior sections ``round(linspace(0, n - 1, K + 2)[1:-1])``
        (duplicates dropped; ``K >= n`` gives all sections).
    project
        Also yield the projection (sum) along ``slice_axis``, after the slices.
    as_volume
        Force 3D files to be read as volumes (True) or stacks (False); None applies the
        layout rule of this module.
    """

    _what = "view"  # the name its unknown saved keys are reported under

    slice_axis: str = "z"
    slices: str | int = "central"
    project: bool = False
    as_volume: bool | None = None

    def __post_init__(self) -> None:
        if self.slice_axis not in _AXES:
            raise OptionError("slice_axis", repr(self.slice_axis), "use z, y or x")
        slices = self.slices
        if isinstance(slices, str) and slices.isdigit():
            slices = int(slices)
            object.__setattr__(self, "slices", slices)
        if isinstance(slices, bool) or not (
            slices in ("central", "all", "none") or (isinstance(slices, int) and slices >= 1)
        ):
            raise OptionError("slices", repr(self.slices), "use central, all, none or a positive integer")
        if slices == "none" and not self.project:
            raise OptionError("slices", "'none'", "no image per volume without the projection",
                              fix="project")

    @property
    def axis(self) -> int:
        """Array axis of ``slice_axis`` in ``(Z, Y, X)`` data."""
        return _AXES.index(self.slice_axis)

    def views(self, info: MrcInfo) -> list[tuple[ViewKind, int]]:
        """The ``(kind, section)`` views of one file, in reading order."""
        if info.layout != "volume":
            return [(ViewKind.IMAGE, k) for k in range(info.shape[0])]
        n = info.shape[self.axis]
        if self.slices == "central":
            sections = [n // 2]
        elif self.slices == "all":
            sections = list(range(n))
        elif self.slices == "none":
            sections = []
        else:
            pos = np.round(np.linspace(0, n - 1, int(self.slices) + 2)[1:-1]).astype(int)
            sections = sorted(set(pos.tolist())) if int(self.slices) < n else list(range(n))
        views = [(ViewKind.SLICE, k) for k in sections]
        if self.project:
            views.append((ViewKind.PROJECTION, 0))
        return views

    def image_shape(self, info: MrcInfo) -> tuple[int, int]:
        """``(H, W)`` of every view of ``info``."""
        if info.layout != "volume":
            return info.shape[1], info.shape[2]
        rest = [s for i, s in enumerate(info.shape) if i != self.axis]
        return rest[0], rest[1]

    def name(self, info: MrcInfo, kind: ViewKind, section: int) -> str:
        """Human-readable name of a view: ``000012@stack.mrcs`` (1-based, RELION style),
        ``image.mrc``, ``map.mrc:z=32`` or ``map.mrc:sum_z``."""
        return view_name(str(info.path), info.layout, kind, section, self.slice_axis)


def view_name(path: str, layout: str, kind: int, section: int, slice_axis: str) -> str:
    """Name of a view; see :meth:`ViewSpec.name`."""
    if kind == ViewKind.IMAGE:
        return f"{section + 1:06d}@{path}" if layout == "stack" else path
    if kind == ViewKind.SLICE:
        return f"{path}:{slice_axis}={section}"
    return f"{path}:sum_{slice_axis}"


@dataclass(frozen=True)
class _Header:
    """The header fields biocnn uses, validated against the file size."""

    order: str  #: "<" or ">"
    nx: int
    ny: int
    nz: int
    mode: int
    mz: int
    ispg: int
    offset: int  #: byte offset of the data block (1024 + nsymbt)
    apix: float  #: 0 = unknown
    dtype: str  #: NumPy type of the pixels, with byte order; "" for unsupported modes
    quirks: tuple[str, ...]
    record: Any  #: the raw header as a NumPy record in the file's byte order


def _fatal(h: np.record, size: int) -> str | None:
    """Why the header ``h`` cannot describe a file of ``size`` bytes, or None. Only Python
    integers are used, so absurd values cannot overflow or allocate."""
    mode = int(h["mode"])
    if mode not in _MODE_BYTES:
        return f"mode {mode} is not an MRC data mode"
    dims = {"nx": int(h["nx"]), "ny": int(h["ny"]), "nz": int(h["nz"])}
    for name, value in dims.items():
        if value <= 0:
            return f"header {name} = {value}; image sizes must be positive"
    nsymbt = int(h["nsymbt"])
    if nsymbt < 0:
        return f"extended header size {nsymbt} is negative"
    if _HEADER_BYTES + nsymbt > size:
        return f"extended header size {nsymbt} is larger than the file ({size} bytes)"
    row = -(-dims["nx"] // 2) if mode == 101 else dims["nx"] * int(_MODE_BYTES[mode])
    need = _HEADER_BYTES + nsymbt + row * dims["ny"] * dims["nz"]
    if need > size:
        return f"file is truncated: header says {need} bytes, file has {size}"
    return None


def _order_name(order: str) -> str:
    return "little-endian" if order == "<" else "big-endian"


def _parse_header(path: str, raw: bytes, size: int) -> _Header:
    """Validate the 1024-byte header ``raw`` of a file of ``size`` bytes; list its quirks.

    The byte order is the machine stamp's when the header makes sense in it, else the other
    one; a header that makes sense in neither is refused with the stamp order's reason.
    """
    stamp = raw[212:216]
    stamped = "<" if stamp[0] in (0x44, 0x41) else ">" if stamp[0] == 0x11 else None
    orders = [stamped, ">" if stamped == "<" else "<"] if stamped else ["<", ">"]
    records = {o: np.frombuffer(raw, HEADER_DTYPE.newbyteorder(o)).view(np.recarray)[0] for o in orders}
    problems = {o: _fatal(records[o], size) for o in orders}
    order = next((o for o in orders if problems[o] is None), None)
    if order is None:
        raise BiocnnError(f"{path}: not a readable MRC file ({problems[orders[0]]})")
    h = records[order]
    quirks: list[str] = []
    if stamped is None:
        quirks.append(f"machine stamp {stamp.hex(' ')} (read as {_order_name(order)})")
    elif order != stamped:
        quirks.append(f"machine stamp {stamp.hex(' ')} contradicts the header (read as {_order_name(order)})")
    if bytes(h["map"])[:3] != b"MAP":
        quirks.append("no 'MAP ' id string")
    stats = np.array([h["dmin"], h["dmax"], h["dmean"], h["rms"]], dtype=np.float64)
    if not np.isfinite(stats).all():
        quirks.append("non-finite min/max/mean/rms")
    nx, ny, nz, mode = int(h["nx"]), int(h["ny"]), int(h["nz"]), int(h["mode"])
    mx, mz, ispg = int(h["mx"]), int(h["mz"]), int(h["ispg"])
    cell = float(h["cella"]["x"])
    apix = cell / mx if mx > 0 and np.isfinite(cell) and cell > 0 else 0.0
    if not (np.isfinite(apix) and apix > 0):
        apix = 0.0
        what = f"sampling mx = {mx}" if mx <= 0 else f"cell size {cell:g}"
        quirks.append(f"{what} (pixel size unknown)")
    if not (0 <= ispg <= 230 or 401 <= ispg <= 630):
        quirks.append(f"invalid space group {ispg} (ignored)")
    nsymbt = int(h["nsymbt"])
    row = -(-nx // 2) if mode == 101 else nx * int(_MODE_BYTES[mode])
    extra = size - (_HEADER_BYTES + nsymbt + row * ny * nz)
    if extra > 0:
        quirks.append(f"{extra} bytes after the data (ignored)")
    dtype = ""
    if mode in _MODE_TYPES:
        dtype = order + _MODE_TYPES[mode]
        imod_stamp, imod_flags = struct.unpack_from(order + "2i", raw, 152)
        if mode == 0 and imod_stamp == _IMOD_STAMP and not imod_flags & 1:
            dtype = "u1"  # IMOD writes unsigned bytes unless its flag says signed
    return _Header(
        order=order, nx=nx, ny=ny, nz=nz, mode=mode, mz=mz, ispg=ispg,
        offset=_HEADER_BYTES + nsymbt, apix=round(apix, 5), dtype=dtype, quirks=tuple(quirks),
        record=h,
    )


def _check_readable(path: str, h: _Header) -> None:
    """Refuse modes and 4D layouts biocnn cannot turn into 2D float images."""
    if not h.dtype:
        raise BiocnnError(
            f"{path}: unsupported MRC mode {h.mode} (complex or packed data); "
            "need mode 0, 1, 2, 6 or 12"
        )
    if 401 <= h.ispg <= 630 and 0 < h.mz < h.nz:
        raise BiocnnError(
            f"{path}: 4D data (a stack of {h.nz // h.mz} volumes, space group {h.ispg}) is not supported"
        )


@dataclass(eq=False)
class MrcHandle:
    """A validated, read-only memory map of one MRC file (from :func:`open_mrc`; do not close).

    Attributes
    ----------
    path
        The file.
    data
        ``(Y, X)`` for a single image, else ``(Z, Y, X)``: a read-only view of the map in
        the file's type and byte order.
    header
        The raw 1024-byte header as a NumPy record (mrcfile's field names).
    apix
        Pixel size in Å (0 = unknown).
    quirks
        Header defects that were tolerated.
    """

    path: str
    data: np.ndarray
    header: Any
    apix: float
    quirks: tuple[str, ...]
    _parsed: _Header
    _map: mmap.mmap | None

    def close(self) -> None:
        """Release the map (it stays alive while arrays taken from ``data`` exist)."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # arrays still view it; it closes with the last of them
                pass
            self._map = None


def _read_head(path: str) -> tuple[bytes, int, mmap.mmap | None]:
    """The first 1024 bytes, the size and (for files of at least 1024 bytes) a read-only map."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER_BYTES:
                return f.read(_HEADER_BYTES), size, None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise BiocnnError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # mmap of a file truncated meanwhile
        raise BiocnnError(f"cannot read {path}: {exc}") from exc
    return mapped[:_HEADER_BYTES], len(mapped), mapped


def _open(path: str) -> MrcHandle:
    """Validate the header against the file size, then map the data block."""
    raw, size, mapped = _read_head(path)
    try:
        kind = sniff_bytes(raw, path)
        refuse_unsupported(path, kind)
        if kind in ("star", "cs"):
            raise BiocnnError(f"{path}: {FORMAT_NAMES[kind]} file, not an MRC image file")
        if size < _HEADER_BYTES:
            raise BiocnnError(
                f"{path}: not a readable MRC file ({size} bytes, shorter than the 1024-byte header)"
            )
        assert mapped is not None
        h = _parse_header(path, raw, size)
        _check_readable(path, h)
        count = h.nx * h.ny * h.nz
        flat = np.frombuffer(mapped, dtype=np.dtype(h.dtype), count=count, offset=h.offset)
    except BaseException:
        if mapped is not None:
            mapped.close()
        raise
    data = flat.reshape((h.ny, h.nx) if h.nz == 1 else (h.nz, h.ny, h.nx))
    return MrcHandle(path=path, data=data, header=h.record, apix=h.apix, quirks=h.quirks,
                     _parsed=h, _map=mapped)


#: Files already warned about in this process: (path, inode, size, mtime).
_WARNED: set[tuple[str, int, int, int]] = set()


def _warn_quirks(handle: MrcHandle, stamp: tuple[int, int, int]) -> None:
    """One warning per file and process listing every tolerated header defect."""
    key = (handle.path, *stamp)
    if handle.quirks and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"{handle.path}: MRC header quirks accepted: {'; '.join(handle.quirks)}",
            MrcQuirkWarning,
            stacklevel=4,
        )


class _HandleCache:
    """Per-process LRU cache of open maps, keyed by path."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pid = os.getpid()
        self.handles: OrderedDict[str, tuple[tuple[int, int, int], MrcHandle]] = OrderedDict()

    def clear(self) -> None:
        for _, handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def get(self, path: str) -> MrcHandle:
        if os.getpid() != self.pid:  # forked: the parent's maps are not ours to use
            self.handles.clear()
            self.pid = os.getpid()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise BiocnnError(f"cannot read {path}: {exc.strerror}") from exc
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.handles.get(path)
        if cached is not None:
            if cached[0] == stamp:
                self.handles.move_to_end(path)
                return cached[1]
            self.handles.pop(path)[1].close()
        handle = _open(path)
        _warn_quirks(handle, stamp)
        self.handles[path] = (stamp, handle)
        if len(self.handles) > self.capacity:
            self.handles.popitem(last=False)[1][1].close()
        return handle


_CACHE = _HandleCache(_CACHE_SIZE)


def open_mrc(path: str | os.PathLike) -> MrcHandle:
    """Return this process's cached, validated read-only map of ``path`` (do not close it).

    Header quirks are always tolerated with one :class:`MrcQuirkWarning` per file. Raises
    :class:`BiocnnError` for a missing, truncated, non-MRC or unsupported file (other
    formats, complex or packed modes, 4D data).
    """
    return _CACHE.get(os.fspath(path))


def _layout(h: _Header, suffix: str, as_volume: bool | None) -> tuple[Layout, str]:
    """The layout of a header and why (the module docstring's rule)."""
    if h.nz == 1:
        return "image", "one section"
    if as_volume is not None:
        return ("volume", "--volume") if as_volume else ("stack", "--stack")
    if suffix == ".mrcs":
        return "stack", ".mrcs name"
    if 401 <= h.ispg <= 630:
        return "volume", f"space group {h.ispg} (one volume)"
    if suffix == ".map":
        return "volume", ".map name"
    if h.ispg == 0:
        return "stack", "space group 0"
    if 2 <= h.ispg <= 230:
        return "volume", f"space group {h.ispg}"
    shape = f"{h.nz}x{h.ny}x{h.nx}"
    if h.nz == h.ny == h.nx and h.mz != 1:
        return "volume", f"space group {h.ispg} with a cubic {shape} block (--stack to override)"
    return "stack", f"space group {h.ispg} with a particle-like {shape} shape (--volume to override)"


def inspect_mrc(path: str | os.PathLike, *, as_volume: bool | None = None) -> MrcInfo:
    """Read the header of ``path`` and classify it (see the module's layout rule).

    Parameters
    ----------
    path
        MRC file.
    as_volume
        Force a 3D file to be a volume (True) or a stack (False); None = layout rule.
    """
    handle = open_mrc(path)
    h = handle._parsed
    layout, reason = _layout(h, Path(path).suffix.lower(), as_volume)
    return MrcInfo(
        path=Path(path),
        layout=layout,
        shape=(h.nz, h.ny, h.nx),
        apix=h.apix,
        mode=h.mode,
        reason=reason,
        quirks=h.quirks,
    )


def _first_nonfinite(images: np.ndarray) -> int | None:
    """Index of the first image of a ``(B, H, W)`` float block with a NaN/Inf pixel, or None."""
    finite = np.isfinite(images)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(images.shape[0], -1).all(axis=1))[0])


def check_sections(path: str, sections: np.ndarray, count: int) -> None:
    """Raise :class:`BiocnnError` naming the first of ``sections`` (0-based) outside a
    file of ``count`` images."""
    bad = (sections < 0) | (sections >= count)
    if bad.any():
        k = int(sections[bad][0])
        raise BiocnnError(f"{path}: image index {k + 1} out of range ({count} images)")


def read_sections(path: str | os.PathLike, sections: np.ndarray | list[int]) -> np.ndarray:
    """Copy images ``sections`` (0-based, any order, repeats allowed) of a stack or 2D image.

    The sections are read in file order with positioned reads, one per run of consecutive
    sections, rather than through the memory map: pages of a map stay in the process's
    resident set until it is unmapped, so a stack larger than RAM read through it shows as
    a growing RSS (and can push other jobs out), while a plain read leaves them to the page
    cache.

    Returns
    -------
    np.ndarray
        ``(B, H, W)`` float32, a copy. Raises :class:`BiocnnError` for an index out of
        range, a file that shrank, or an image with NaN/Inf pixels.
    """
    spath = os.fspath(path)
    handle = open_mrc(spath)
    h = handle._parsed
    count = 1 if handle.data.ndim == 2 else len(handle.data)
    idx = np.asarray(sections, dtype=np.int64).reshape(-1)
    check_sections(spath, idx, count)
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    raw = np.empty((len(idx), h.ny, h.nx), dtype=np.dtype(h.dtype))
    size = raw[0].nbytes if len(idx) else 0
    cuts = np.flatnonzero(np.diff(ordered) != 1) + 1
    try:
        with open(spath, "rb", buffering=0) as f:
            for run in np.split(np.arange(len(idx)), cuts) if len(idx) else []:
                f.seek(h.offset + int(ordered[run[0]]) * size)
                buf = memoryview(raw[run[0] : run[-1] + 1].reshape(-1).view(np.uint8))
                while len(buf):  # one read returns at most ~2 GiB on Linux
                    got = f.readinto(buf)
                    if not got:
                        raise BiocnnError(f"{spath}: file is shorter than when it was opened")
                    buf = buf[got:]
    except OSError as exc:
        raise BiocnnError(f"cannot read {spath}: {exc.strerror or exc}") from exc
    block = np.empty((len(idx), h.ny, h.nx), dtype=np.float32)
    block[order] = raw  # back to the order asked for, native float32
    bad = _first_nonfinite(block)
    if bad is not None:
        raise BiocnnError(f"{spath}: image {int(idx[bad]) + 1} contains NaN or Inf pixels")
    return block


def read_view(
    path: str | os.PathLike,
    kind: int,
    section: int,
    slice_axis: str = "z",
) -> np.ndarray:
    """Copy one 2D view out of a memory-mapped file.

    Parameters
    ----------
    path
        MRC file.
    kind, section
        A :class:`ViewKind` and its section index (0-based; 0 for a 2D image or a projection).
    slice_axis
        ``"z"``, ``"y"`` or ``"x"`` for slices and projections of volumes.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32, a copy (never a view of the map).
    """
    path = os.fspath(path)
    if kind == ViewKind.IMAGE:
        return read_sections(path, [section])[0].copy()  # own its memory
    data = open_mrc(path).data
    if data.ndim != 3:
        raise BiocnnError(f"{path}: a 2D image has no volume slices or projections")
    axis = _AXES.index(slice_axis)
    if kind == ViewKind.SLICE:
        if not 0 <= section < data.shape[axis]:
            raise BiocnnError(f"{path}: slice {slice_axis}={section} out of range")
        image = data[(slice(None),) * axis + (section,)]
        what = f"slice {slice_axis}={section}"
    else:
        image = data.sum(axis=axis, dtype=np.float64)
        what = f"the projection along {slice_axis}"
    out = np.array(image, dtype=np.float32)
    if _first_nonfinite(out[None]) is not None:
        raise BiocnnError(f"{path}: {what} contains NaN or Inf pixels")
    return out


def iter_images(
    path: str | os.PathLike,
    views: ViewSpec | None = None,
    *,
    chunk: int = 256,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over all images a file yields, ``chunk`` at a time, with flat memory.

    Consecutive stack sections are copied out of the memory map as one block; volume
    views are read one by one. A file without a pixel size is warned about (once, with its
    other header quirks) when it is opened.

    Parameters
    ----------
    path
        MRC image, stack or volume.
    views
        Which views a volume yields (default :class:`ViewSpec()`: the central z slice).
    chunk
        Maximum number of images per yielded batch.

    Yields
    ------
    indices : np.ndarray
        ``(b,)`` int64 positions in ``views.views(inspect_mrc(path))``: for images and
        stacks these are the 0-based section numbers.
    images : np.ndarray
        ``(b, H, W)`` float32 copies.
    """
    views = views or ViewSpec()
    if chunk < 1:
        raise BiocnnError(f"chunk size {chunk} must be >= 1")
    spath = os.fspath(path)
    info = inspect_mrc(spath, as_volume=views.as_volume)
    view_list = views.views(info)
    for start in range(0, len(view_list), chunk):
        part = view_list[start : start + chunk]
        indices = np.arange(start, start + len(part), dtype=np.int64)
        if info.layout != "volume":
            block = read_sections(spath, [s for _, s in part])
        else:
            block = np.stack(
                [read_view(spath, k, s, views.slice_axis) for k, s in part]
            )
        yield indices, block
