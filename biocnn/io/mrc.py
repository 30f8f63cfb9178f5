"""MRC files: memory-mapped readers for images, stacks and volumes; atomic writer.

Files are opened with ``mrcfile.mmap(..., mode="r")`` and pixels are copied out one
image (or one batch) at a time, so a stack larger than RAM is read with flat memory:
after every 64 MiB copied out of the maps, this process drops the mapped pages it holds
when its maps add up to more than 128 MiB (:func:`note_mapped_read`). Open handles live
in a small per-process LRU cache that is rebuilt after a ``fork`` (each DataLoader
worker opens its own maps) and that notices a file replaced on disk.

Layout rule
-----------
The data block of an MRC file is 2D ``(Y, X)`` or 3D ``(N, Y, X)``; mrcfile maps a file
with one section to 2D. A 2D block is one **image**. A 3D block is:

1. a **volume** or a **stack** as forced by ``ViewSpec.as_volume`` when it is not ``None``;
2. else a **stack** if the file name ends in ``.mrcs`` (RELION convention, whatever the
   header says) and a **volume** if it ends in ``.map``;
3. else what the header says: space group ``ispg == 0`` is an image stack, any other
   space group a volume (mrcfile's ``is_image_stack()`` / ``is_volume()``). Note that
   ``mrcfile.new`` marks 3D data as a volume unless ``set_image_stack()`` is called.

A stack yields one image per section. A volume yields 2D views chosen by
:class:`ViewSpec`: slices perpendicular to ``slice_axis`` and/or the projection (sum)
along it. Volume stacks (4D data) and complex or packed modes are rejected.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import mrcfile
import numpy as np
from mrcfile.mrcmemmap import MrcMemmap

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError

__all__ = [
    "MRC_SUFFIXES",
    "ViewKind",
    "ViewSpec",
    "MrcInfo",
    "inspect_mrc",
    "open_mrc",
    "read_view",
    "read_sections",
    "check_sections",
    "note_mapped_read",
    "view_name",
    "iter_images",
    "write_mrc",
]

#: File name suffixes recognised as MRC files when scanning folders (case-insensitive).
MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".map")

#: MRC modes that can be read as real pixels: int8, int16, float32, uint16, float16.
_SUPPORTED_MODES = (0, 1, 2, 6, 12)
_AXES = ("z", "y", "x")
_CACHE_SIZE = 32
#: Bytes copied out of memory maps after which this process releases their mapped pages ...
_RELEASE_BYTES = 64 << 20
#: ... unless all its open maps together are no larger than this (they bound RSS already).
_MAPPED_LIMIT = 128 << 20

Layout = Literal["image", "stack", "volume"]


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
        Pixel size in Å from the header (``voxel_size.x``, rounded to 1e-5 Å); 0 = unknown.
    mode
        MRC data mode.
    """

    path: Path
    layout: Layout
    shape: tuple[int, int, int]
    apix: float
    mode: int


@dataclass(frozen=True)
class ViewSpec:
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

    slice_axis: str = "z"
    slices: str | int = "central"
    project: bool = False
    as_volume: bool | None = None

    def __post_init__(self) -> None:
        if self.slice_axis not in _AXES:
            raise BiocnnError(f"--slice-axis {self.slice_axis!r}: use z, y or x")
        slices = self.slices
        if isinstance(slices, str) and slices.isdigit():
            slices = int(slices)
            object.__setattr__(self, "slices", slices)
        if isinstance(slices, bool) or not (
            slices in ("central", "all", "none") or (isinstance(slices, int) and slices >= 1)
        ):
            raise BiocnnError(
                f"--slices {self.slices!r}: use central, all, none or a positive integer"
            )
        if slices == "none" and not self.project:
            raise BiocnnError("--slices none without --project would yield no image per volume")

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

    def to_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewSpec:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`BiocnnError`."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BiocnnError(f"unknown view option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def view_name(path: str, layout: str, kind: int, section: int, slice_axis: str) -> str:
    """Name of a view; see :meth:`ViewSpec.name`."""
    if kind == ViewKind.IMAGE:
        return f"{section + 1:06d}@{path}" if layout == "stack" else path
    if kind == ViewKind.SLICE:
        return f"{path}:{slice_axis}={section}"
    return f"{path}:sum_{slice_axis}"


class _HandleCache:
    """Per-process LRU cache of open memory maps, keyed by path and permissive flag."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pid = os.getpid()
        self.handles: OrderedDict[tuple[str, bool], tuple[tuple[int, int, int], MrcMemmap]] = (
            OrderedDict()
        )
        self.unreleased = 0

    def note_read(self, nbytes: int) -> None:
        """Count ``nbytes`` copied out of the maps; past :data:`_RELEASE_BYTES`, drop the
        mapped pages of every open map from this process's resident set, unless the maps
        together are smaller than :data:`_MAPPED_LIMIT`."""
        self.unreleased += nbytes
        if self.unreleased < _RELEASE_BYTES:
            return
        self.unreleased = 0
        maps = [getattr(h.data, "_mmap", None) for _, h in self.handles.values()]
        maps = [m for m in maps if m is not None and not m.closed]
        if not hasattr(mmap, "MADV_DONTNEED") or sum(len(m) for m in maps) <= _MAPPED_LIMIT:
            return
        for m in maps:
            m.madvise(mmap.MADV_DONTNEED)

    def clear(self) -> None:
        for _, handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def get(self, path: str, permissive: bool) -> MrcMemmap:
        if os.getpid() != self.pid:  # forked: the parent's maps are not ours to use
            self.clear()
            self.pid = os.getpid()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise BiocnnError(f"cannot read {path}: {exc.strerror}") from exc
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        key = (path, permissive)
        cached = self.handles.get(key)
        if cached is not None:
            if cached[0] == stamp:
                self.handles.move_to_end(key)
                return cached[1]
            self.handles.pop(key)[1].close()
        handle = _open_mmap(path, permissive)
        self.handles[key] = (stamp, handle)
        if len(self.handles) > self.capacity:
            self.handles.popitem(last=False)[1][1].close()
        return handle


_CACHE = _HandleCache(_CACHE_SIZE)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _open_mmap(path: str, permissive: bool) -> MrcMemmap:
    """Open and validate a memory map; every failure is a one-line :class:`BiocnnError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode warns for each header defect
            handle = mrcfile.mmap(path, mode="r", permissive=permissive)
    except (ValueError, OSError) as exc:
        raise BiocnnError(f"{path}: not a readable MRC file ({_one_line(exc)})") from exc
    if handle.data is None:
        handle.close()
        raise BiocnnError(f"{path}: not a readable MRC file (no valid data block)")
    mode = int(handle.header.mode)
    if mode not in _SUPPORTED_MODES:
        handle.close()
        raise BiocnnError(
            f"{path}: unsupported MRC mode {mode} (complex or packed data); "
            "need mode 0, 1, 2, 6 or 12"
        )
    ndim = handle.data.ndim
    if ndim not in (2, 3):
        handle.close()
        raise BiocnnError(f"{path}: {ndim}D data (volume stack) is not supported")
    return handle


def open_mrc(path: str | os.PathLike, permissive: bool = False) -> MrcMemmap:
    """Return this process's cached read-only memory map of ``path`` (do not close it).

    Raises :class:`BiocnnError` for a missing, truncated or non-MRC file, complex or
    packed modes, and 4D data.
    """
    return _CACHE.get(os.fspath(path), permissive)


def inspect_mrc(
    path: str | os.PathLike, *, as_volume: bool | None = None, permissive: bool = False
) -> MrcInfo:
    """Read the header of ``path`` and classify it (see the module's layout rule).

    Parameters
    ----------
    path
        MRC file.
    as_volume
        Force a 3D file to be a volume (True) or a stack (False); None = layout rule.
    permissive
        Passed to mrcfile: tolerate header defects (a bad map ID or machine stamp).
    """
    handle = open_mrc(path, permissive)
    data = handle.data
    if data.ndim == 2:
        layout: Layout = "image"
        shape = (1, int(data.shape[0]), int(data.shape[1]))
    else:
        shape = (int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))
        suffix = Path(path).suffix.lower()
        if as_volume is not None:
            is_volume = as_volume
        elif suffix in (".mrcs", ".map"):
            is_volume = suffix == ".map"
        else:
            is_volume = bool(handle.is_volume())
        layout = "volume" if is_volume else "stack"
    apix = float(handle.voxel_size.x)
    return MrcInfo(
        path=Path(path),
        layout=layout,
        shape=shape,
        apix=round(apix, 5) if np.isfinite(apix) and apix > 0 else 0.0,
        mode=int(handle.header.mode),
    )


def _first_nonfinite(images: np.ndarray) -> int | None:
    """Index of the first image of a ``(B, H, W)`` float block with a NaN/Inf pixel, or None."""
    finite = np.isfinite(images)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(images.shape[0], -1).all(axis=1))[0])


def note_mapped_read(nbytes: int) -> None:
    """Record that ``nbytes`` of pixels were copied out of this process's memory maps.

    They are clean file pages (the kernel keeps them in its page cache), but while mapped
    they count towards RSS. Every 64 MiB read, the pages of all open maps are released
    (re-reading them then costs a page fault per ~64 KiB) -- unless the open maps add up
    to 128 MiB or less, which bounds their RSS anyway. So RSS stays flat over stacks
    larger than RAM. Readers that copy straight out of :func:`open_mrc` maps call this.
    """
    _CACHE.note_read(int(nbytes))


def check_sections(path: str, sections: np.ndarray, count: int) -> None:
    """Raise :class:`BiocnnError` naming the first of ``sections`` (0-based) outside a
    file of ``count`` images."""
    bad = (sections < 0) | (sections >= count)
    if bad.any():
        k = int(sections[bad][0])
        raise BiocnnError(f"{path}: image index {k + 1} out of range ({count} images)")


def read_sections(
    path: str | os.PathLike, sections: np.ndarray | list[int], permissive: bool = False
) -> np.ndarray:
    """Copy images ``sections`` (0-based, any order) of a stack or 2D image file.

    Returns
    -------
    np.ndarray
        ``(B, H, W)`` float32, a copy. Raises :class:`BiocnnError` for an index out of
        range or an image with NaN/Inf pixels.
    """
    spath = os.fspath(path)
    data = open_mrc(spath, permissive).data
    stack = data if data.ndim == 3 else data[None]
    idx = np.asarray(sections, dtype=np.int64).reshape(-1)
    check_sections(spath, idx, len(stack))
    run = len(idx) > 0 and bool(np.all(np.diff(idx) == 1))
    picked = stack[idx[0] : idx[-1] + 1] if run else stack[idx]
    block = np.asarray(picked, dtype=np.float32)
    if np.may_share_memory(block, stack):  # a float32 slice is still a view of the map
        block = block.copy()
    note_mapped_read(block.nbytes)
    bad = _first_nonfinite(block)
    if bad is not None:
        raise BiocnnError(f"{spath}: image {int(idx[bad]) + 1} contains NaN or Inf pixels")
    return block


def read_view(
    path: str | os.PathLike,
    kind: int,
    section: int,
    slice_axis: str = "z",
    permissive: bool = False,
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
    permissive
        Passed to mrcfile.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32, a copy (never a view of the map).
    """
    path = os.fspath(path)
    if kind == ViewKind.IMAGE:
        return read_sections(path, [section], permissive)[0].copy()  # own its memory
    data = open_mrc(path, permissive).data
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
    permissive: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over all images a file yields, ``chunk`` at a time, with flat memory.

    Consecutive stack sections are copied out of the memory map as one block; volume
    views are read one by one. Warns once if the file has no pixel size.

    Parameters
    ----------
    path
        MRC image, stack or volume.
    views
        Which views a volume yields (default :class:`ViewSpec()`: the central z slice).
    chunk
        Maximum number of images per yielded batch.
    permissive
        Passed to mrcfile.

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
    info = inspect_mrc(spath, as_volume=views.as_volume, permissive=permissive)
    if info.apix == 0:
        warnings.warn(f"{spath}: pixel size unknown (0 in header)", stacklevel=2)
    view_list = views.views(info)
    for start in range(0, len(view_list), chunk):
        part = view_list[start : start + chunk]
        indices = np.arange(start, start + len(part), dtype=np.int64)
        if info.layout == "stack":
            block = read_sections(spath, [s for _, s in part], permissive)
        else:
            block = np.stack(
                [read_view(spath, k, s, views.slice_axis, permissive) for k, s in part]
            )
        yield indices, block


def write_mrc(
    path: str | os.PathLike, data: np.ndarray, apix: float = 0.0, is_stack: bool = False
) -> Path:
    """Atomically write ``data`` as float32 MRC with pixel size ``apix`` (Å; 0 = unknown).

    Parameters
    ----------
    path
        Destination (``.mrc``, ``.mrcs`` or ``.map``).
    data
        ``(Y, X)`` image, ``(N, Y, X)`` stack or ``(Z, Y, X)`` volume.
    apix
        Pixel (voxel) size in Å written to the header.
    is_stack
        Mark a 3D array as an image stack (``ispg = 0``) rather than a volume.
    """
    arr = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path, suffix=".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 3:
                if is_stack:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            mrc.voxel_size = float(apix)
    return Path(path)
