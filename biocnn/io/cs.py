"""cryoSPARC particle tables (``.cs``): read, resolve the particle stacks, write subsets.

A ``.cs`` file is one NumPy structured array saved with ``np.save`` (magic ``\\x93NUMPY``),
one row per particle; the fields used here are

* ``blob/path`` (bytes): the particle stack, relative to the cryoSPARC **project folder**
  (e.g. ``J12/extract/..._particles.mrc``); a leading ``>`` marks a path cryoSPARC
  links rather than owns and is dropped;
* ``blob/idx``: the 0-based section in that stack;
* ``blob/psize_A``: the pixel size in Å;
* ``ctf/*``, ``alignments2D/*``, ... are carried along unchanged when a subset is written.

The array is memory-mapped after its header has been checked against the file size
(so a hostile header cannot make us allocate), and fields holding Python objects are
never read (``allow_pickle`` stays off). cryosparc-tools is not needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError, OptionError
from biocnn.io import FORMAT_NAMES, refuse_unsupported, sniff_bytes
from biocnn.io.star import MAX_INDEX, duplicates, image_groups

__all__ = ["CsTable", "read_cs", "write_cs", "PATH_FIELD", "INDEX_FIELD", "PSIZE_FIELD"]

PATH_FIELD = "blob/path"
INDEX_FIELD = "blob/idx"
PSIZE_FIELD = "blob/psize_A"
_NUMPY_MAGIC = b"\x93NUMPY"
_CSDAT_MAGIC = b"\x94CSDAT"  # cryosparc-tools' compressed format
#: Largest ``.npy`` header read: cryoSPARC's exceed NumPy's 10 kB default (about 45 bytes a
#: field), but parsing a header costs ~80x its size in memory, so it is bounded.
_MAX_HEADER = 256 << 10
#: Deepest bracket nesting of a header (a cryoSPARC dtype needs 3), checked before parsing.
_MAX_DEPTH = 8


def _check_header_text(path: Path, f, size: int) -> None:
    """Bound the ``.npy`` header's length and nesting before NumPy parses it, so a hostile
    header costs neither memory nor time; ``f`` is left where it was."""
    start = f.tell()
    prefix = f.read(12)
    major = prefix[6] if len(prefix) > 6 else 0
    width = 2 if major == 1 else 4
    if len(prefix) < 8 + width:
        raise BiocnnError(f"{path}: not a readable cryoSPARC .cs file (file ends in its header)")
    length = int.from_bytes(prefix[8 : 8 + width], "little")
    if length > _MAX_HEADER or 8 + width + length > size:
        raise BiocnnError(
            f"{path}: not a readable cryoSPARC .cs file (header of {length} bytes; "
            f"at most {_MAX_HEADER} and the file has {size})"
        )
    f.seek(start + 8 + width)
    brackets = f.read(length).translate(None, delete=bytes(b for b in range(256) if b not in b"([{}])"))
    depth = deepest = 0
    for b in brackets:
        depth += 1 if b in b"([{" else -1
        deepest = max(deepest, depth)
    if deepest > _MAX_DEPTH:
        raise BiocnnError(f"{path}: not a readable cryoSPARC .cs file (header nested {deepest} deep)")
    f.seek(start)


@dataclass(eq=False)
class CsTable:
    """A cryoSPARC particle table read from a ``.cs`` file.

    Attributes
    ----------
    path
        The ``.cs`` file.
    records
        ``(N,)`` structured array of the file (read-only memory map), all fields.
    project_dir
        The cryoSPARC project folder ``blob/path`` is relative to (``cs_project``), or
        None to look next to and above the ``.cs`` file and in the working directory.
    """

    path: Path
    records: np.ndarray
    project_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names, in file order."""
        return tuple(self.records.dtype.names or ())

    def column(self, name: str) -> np.ndarray:
        """The field ``name`` (``(N,)`` or ``(N, ...)``); a missing field is a one-line error."""
        if name not in self.fields:
            raise BiocnnError(f"{self.path}: no field {name!r} (have: {', '.join(self.fields)})")
        return self.records[name]

    def blob_paths(self) -> list[str]:
        """``(N,)`` ``blob/path`` values as text, without cryoSPARC's ``>`` prefix."""
        raw = self.column(PATH_FIELD)
        decoded: dict[object, str] = {}
        out: list[str] = []
        for value in raw.tolist():
            if value not in decoded:
                text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
                decoded[value] = text.strip().removeprefix(">")
            out.append(decoded[value])
        return out

    def image_refs(self) -> tuple[list[Path], np.ndarray]:
        """Resolve every particle's stack and section.

        Returns
        -------
        paths : list[Path]
            ``(N,)`` stack files: ``blob/path`` in ``project_dir`` (or, failing that, its file
            name there, for stacks copied flat); without ``project_dir``, in the ``.cs``
            file's folder, its parents (the ``.cs`` of job ``J12`` sits in ``PROJECT/J12/``)
            and the working directory.
        sections : np.ndarray
            ``(N,)`` int64 0-based ``blob/idx``.

        Raises :class:`BiocnnError` naming the first stack that cannot be found (telling to
        set ``cs_project``) or an index out of range.
        """
        idx = np.asarray(self.column(INDEX_FIELD))
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise BiocnnError(f"{self.path}: field {INDEX_FIELD} must hold one integer per particle")
        sections = idx.astype(np.int64)
        bad = (sections < 0) | (sections >= MAX_INDEX) | (idx.astype(np.uint64) > MAX_INDEX)
        if bad.any():
            raise BiocnnError(
                f"{self.path}: {INDEX_FIELD} {int(idx[bad][0])} out of range 0..{MAX_INDEX - 1}"
            )
        resolved: dict[str, Path] = {}
        paths: list[Path] = []
        for rel in self.blob_paths():
            if rel not in resolved:
                resolved[rel] = self._locate(rel)
            paths.append(resolved[rel])
        return paths, sections

    def _locate(self, rel: str) -> Path:
        if not rel or len(rel) > 4096:
            raise BiocnnError(f"{self.path}: {PATH_FIELD} of {len(rel)} characters")
        path = Path(rel)
        if path.is_absolute():
            if _is_file(path):
                return path
            bases: tuple[Path, ...] = ()
        elif self.project_dir is not None:
            bases = (self.project_dir,)
        else:
            here = self.path.parent
            bases = (here, *here.resolve().parents, Path.cwd())
        for base in bases:
            if _is_file(base / path):
                return base / path
        if self.project_dir is not None:
            flat = self.project_dir / path.name
            if _is_file(flat):
                return flat
            raise OptionError("cs_project", self.project_dir,
                              f"particle stack {rel} of {self.path} not found there")
        raise OptionError("cs_project", None, f"needed: {self.path} names particle stack {rel}, "
                          f"not found near it ({PATH_FIELD} is relative to the cryoSPARC project "
                          "folder)")

    def pixel_sizes(self) -> np.ndarray:
        """``(N,)`` float64 ``blob/psize_A`` in Å (0 = unknown: no such field, or not a
        positive finite value)."""
        if PSIZE_FIELD not in self.fields:
            return np.zeros(len(self))
        values = np.asarray(self.records[PSIZE_FIELD], dtype=np.float64).reshape(len(self), -1)[:, 0]
        return np.where(np.isfinite(values) & (values > 0), values, 0.0)

    def image_groups(self) -> np.ndarray:
        """``(N,)`` int64: for each row, the first row showing the same image (see
        :func:`biocnn.io.star.image_groups`); rows with equal values stay in one split."""
        return image_groups(*self.image_refs())

    def duplicate_images(self) -> np.ndarray:
        """``(N,)`` bool: rows whose image also appears in another row (all copies)."""
        return duplicates(self.image_groups())


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that answers False for names the OS refuses (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_header(path: Path, size: int) -> tuple[np.dtype, int, int]:
    """``(dtype, count, data offset)`` of a ``.npy`` file, checked against its ``size``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            refuse_unsupported(path, sniff_bytes(head, path))
            if head.startswith(_CSDAT_MAGIC):
                raise BiocnnError(
                    f"{path}: cryosparc-tools' compressed dataset format is not supported; "
                    "save the dataset in the NumPy format"
                )
            if not head.startswith(_NUMPY_MAGIC):
                kind = sniff_bytes(head, path)
                what = FORMAT_NAMES[kind] if kind in ("mrc", "star") else "not a NumPy file"
                raise BiocnnError(f"{path}: not a cryoSPARC .cs file ({what})")
            f.seek(0)
            _check_header_text(path, f, size)
            major, _ = np.lib.format.read_magic(f)
            reader = {1: np.lib.format.read_array_header_1_0}.get(major, np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f, max_header_size=_MAX_HEADER)
            offset = f.tell()
    except BiocnnError:
        raise
    except OSError as exc:
        raise BiocnnError(f"cannot read {path}: {exc.strerror}") from exc
    except Exception as exc:  # NumPy's header parser raises assorted errors on bad input
        reason = " ".join(str(exc).split())[:200]
        raise BiocnnError(f"{path}: not a readable cryoSPARC .cs file ({reason})") from exc
    if dtype.names is None or len(shape) != 1:
        raise BiocnnError(f"{path}: not a cryoSPARC .cs file (want a 1-D table of named fields)")
    if dtype.hasobject:
        raise BiocnnError(
            f"{path}: fields of Python objects are not read (unsafe); save strings as fixed-width bytes"
        )
    count = int(shape[0])
    if offset + count * dtype.itemsize > size:
        raise BiocnnError(
            f"{path}: file is truncated: header says {offset + count * dtype.itemsize} bytes, file has {size}"
        )
    del fortran  # 1-D: the order does not matter
    return dtype, count, offset


def read_cs(path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> CsTable:
    """Read a cryoSPARC particle ``.cs`` file (see the module docstring).

    Parameters
    ----------
    path
        The ``.cs`` file (e.g. ``J12/J12_particles.cs`` or an exported one).
    project_dir
        The cryoSPARC project folder ``blob/path`` is relative to (``cs_project``).

    Raises :class:`BiocnnError` (one line) for a missing or malformed file, other formats,
    object fields, and tables without ``blob/path`` / ``blob/idx`` (e.g. a passthrough file).
    """
    path = Path(path)
    if not path.is_file():
        raise BiocnnError(f"cryoSPARC file {path} not found")
    if project_dir is not None and not Path(project_dir).is_dir():
        raise OptionError("cs_project", project_dir, "not a folder")
    dtype, count, offset = _read_header(path, path.stat().st_size)
    if count == 0:
        records = np.zeros(0, dtype)
    else:
        try:
            records = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
        except (OSError, ValueError) as exc:
            raise BiocnnError(f"cannot read {path}: {exc}") from exc
    missing = [f for f in (PATH_FIELD, INDEX_FIELD) if f not in (dtype.names or ())]
    if missing:
        raise BiocnnError(
            f"{path}: no {' or '.join(missing)} field: not a particle .cs file "
            "(a passthrough file holds only metadata; use the job's particles .cs)"
        )
    return CsTable(path=path, records=records, project_dir=None if project_dir is None else Path(project_dir))


def write_cs(path: str | os.PathLike, table: CsTable, rows: np.ndarray | list[int]) -> Path:
    """Atomically write the rows ``rows`` of ``table`` (indices, or an ``(N,)`` bool mask) as a
    ``.cs`` file with the same dtype (every field kept, ``blob/path`` unchanged).

    Raises :class:`BiocnnError` for rows out of range or a file that cannot be written.
    """
    sel = np.asarray(rows)
    n = len(table)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise BiocnnError(f"row mask of shape {sel.shape} for {n} particles of {table.path}")
        sel = np.flatnonzero(sel)
    sel = sel.astype(np.int64, copy=False).reshape(-1)
    if len(sel) and (sel.min() < 0 or sel.max() >= n):
        raise BiocnnError(f"row {int(sel[(sel < 0) | (sel >= n)][0])} out of range for {n} particles")
    subset = np.ascontiguousarray(table.records[sel])
    try:
        with atomic_path(path, suffix=".cs") as tmp:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, subset, allow_pickle=False)
    except OSError as exc:
        raise BiocnnError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
    return Path(path)
