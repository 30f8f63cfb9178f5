"""File formats: MRC images/stacks/volumes, RELION STAR tables and cryoSPARC ``.cs`` tables.

This package module only recognises formats (:func:`sniff_format`) so that a file of a
kind biocnn does not read is refused in one line naming what is supported; the readers
live in :mod:`biocnn.io.mrc`, :mod:`biocnn.io.star` and :mod:`biocnn.io.cs`.
"""

from __future__ import annotations

import os
import struct

from biocnn.errors import BiocnnError

__all__ = [
    "SUPPORTED",
    "FORMAT_NAMES",
    "sniff_bytes",
    "sniff_format",
    "unsupported_message",
    "refuse_unsupported",
]

#: What biocnn reads, as listed in every refusal.
SUPPORTED = "biocnn reads MRC .mrc/.mrcs/.map, RELION .star, cryoSPARC .cs"

#: Human names of the formats :func:`sniff_format` recognises.
FORMAT_NAMES: dict[str, str] = {
    "mrc": "MRC",
    "star": "STAR",
    "cs": "cryoSPARC .cs (NumPy)",
    "tiff": "TIFF",
    "eer": "EER (TIFF-based electron-event data)",
    "hdf5": "HDF5",
    "gzip": "a gzip-compressed file",
    "bzip2": "a bzip2-compressed file",
    "zip": "a ZIP archive",
    "png": "PNG",
    "jpeg": "JPEG",
    "empty": "an empty file",
    "unknown": "an unrecognised format",
}

#: How many leading bytes :func:`sniff_format` reads (an MRC header).
SNIFF_BYTES = 1024

_MRC_MODES = (0, 1, 2, 3, 4, 6, 12, 101)


def _looks_like_mrc(head: bytes) -> bool:
    """A 1024-byte header with a ``MAP`` id, or sizes and mode that make sense in one byte order."""
    if len(head) < SNIFF_BYTES:
        return False
    if head[208:211] == b"MAP":
        return True
    for order in "<>":
        nx, ny, nz, mode = struct.unpack_from(order + "4i", head, 0)
        if mode in _MRC_MODES and min(nx, ny, nz) > 0:
            return True
    return False


def _looks_like_star(head: bytes) -> bool:
    """Text whose first non-comment, non-blank line starts a STAR ``data_`` block."""
    if b"\0" in head:
        return False
    for raw in head.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        return line.startswith(b"data_")
    return False


def sniff_bytes(head: bytes, name: str | os.PathLike = "") -> str:
    """Recognise a file format from its first bytes (up to 1024) and its name.

    Returns
    -------
    str
        A key of :data:`FORMAT_NAMES`: ``"mrc"``, ``"star"``, ``"cs"``, ``"tiff"``, ``"eer"``,
        ``"hdf5"``, ``"gzip"``, ``"bzip2"``, ``"zip"``, ``"png"``, ``"jpeg"``, ``"empty"``
        or ``"unknown"``.
    """
    suffix = os.path.splitext(os.fspath(name))[1].lower()
    if not head:
        return "empty"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):  # TIFF and BigTIFF
        return "eer" if suffix == ".eer" else "tiff"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "cs"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if _looks_like_star(head):  # text without NUL bytes: never an MRC header
        return "star"
    if _looks_like_mrc(head):
        return "mrc"
    return "unknown"


def sniff_format(path: str | os.PathLike) -> str:
    """Recognise the format of the file ``path`` from its first 1024 bytes (see :func:`sniff_bytes`).

    Raises :class:`BiocnnError` when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise BiocnnError(f"cannot read {os.fspath(path)}: {exc.strerror}") from exc
    return sniff_bytes(head, path)


def unsupported_message(path: str | os.PathLike, kind: str) -> str:
    """One line refusing a file of format ``kind``:
    ``"x.tif: TIFF is not supported (biocnn reads MRC .mrc/.mrcs/.map, RELION .star, cryoSPARC .cs)"``."""
    what = FORMAT_NAMES.get(kind, kind)
    if kind in ("gzip", "bzip2", "zip"):
        return f"{os.fspath(path)}: {what} is not supported; decompress it first ({SUPPORTED})"
    return f"{os.fspath(path)}: {what} is not supported ({SUPPORTED})"


def refuse_unsupported(path: str | os.PathLike, kind: str) -> None:
    """Raise :class:`BiocnnError` with :func:`unsupported_message` for formats biocnn never
    reads (TIFF, EER, HDF5, archives, PNG/JPEG, empty files); return for the others."""
    if kind not in ("mrc", "star", "cs", "unknown"):
        raise BiocnnError(unsupported_message(path, kind))
