"""Read and write IDX files (the MNIST format), gzip-compressed or raw, and check SHA256 sums.

An IDX file is a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` = data type, only ``0x08``
unsigned byte is supported; ``DD`` = number of dimensions), one big-endian uint32 size per
dimension, then the data in C order. MNIST labels are ``0x00000801`` (N,) and images are
``0x00000803`` (N, H, W). Every problem with a file is a one-line :class:`BiocnnError` naming it.

Example
-------
>>> write_idx(tmp / "images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))  # doctest: +SKIP
>>> read_idx(tmp / "images-idx3-ubyte.gz", ndim=3).shape                       # doctest: +SKIP
(2, 28, 28)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError

__all__ = [
    "IDX_UBYTE",
    "LABELS_MAGIC",
    "IMAGES_MAGIC",
    "idx_magic",
    "read_idx",
    "write_idx",
    "sha256_file",
    "read_sha256sums",
    "verify_sha256",
]

IDX_UBYTE = 0x08
"""IDX data-type byte for unsigned bytes (the only type MNIST uses)."""

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def idx_magic(ndim: int) -> int:
    """Return the IDX magic number of a uint8 array with ``ndim`` dimensions (e.g. 3 -> 0x803)."""
    return (IDX_UBYTE << 8) | ndim


LABELS_MAGIC = idx_magic(1)
"""0x00000801: uint8 vector (N,), MNIST labels."""
IMAGES_MAGIC = idx_magic(3)
"""0x00000803: uint8 array (N, H, W), MNIST images."""


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading, transparently gunzipping it when it starts with the gzip magic."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise BiocnnError(f"IDX file {path} not found") from None
    except OSError as exc:
        raise BiocnnError(f"cannot read IDX file {path}: {exc.strerror}") from exc
    with raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if is_gzip:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


def _read_exact(stream: BinaryIO, out: memoryview) -> int:
    """Fill ``out`` from ``stream``; return the number of bytes read (short only at end of file)."""
    filled = 0
    while filled < len(out):
        n = stream.readinto(out[filled : filled + _CHUNK])
        if not n:
            break
        filled += n
    return filled


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read a uint8 IDX file (gzip-compressed or raw, detected from the content).

    Parameters
    ----------
    path
        The IDX file.
    ndim
        Required number of dimensions (1 for labels, 3 for images), i.e. the magic number must be
        ``idx_magic(ndim)``. ``None`` accepts any uint8 IDX file.

    Returns
    -------
    numpy.ndarray
        Writable uint8 array with the shape stored in the header, e.g. (N,) or (N, H, W).

    Raises
    ------
    BiocnnError
        Missing or unreadable file, corrupt gzip stream, wrong magic number / data type / number
        of dimensions, truncated data or trailing bytes after the data.
    """
    path = Path(path)
    try:
        with _open(path) as stream:
            header = stream.read(4)
            if len(header) < 4:
                raise BiocnnError(f"IDX file {path} is truncated: no complete 4-byte magic number")
            magic = int.from_bytes(header, "big")
            zeros, dtype, file_ndim = header[:2], header[2], header[3]
            if zeros != b"\0\0":
                raise BiocnnError(f"{path} is not an IDX file: bad magic number 0x{magic:08x}")
            if dtype != IDX_UBYTE:
                raise BiocnnError(
                    f"IDX file {path} has data type 0x{dtype:02x} (magic 0x{magic:08x}); "
                    f"only unsigned byte (0x{IDX_UBYTE:02x}) is supported"
                )
            if ndim is not None and file_ndim != ndim:
                raise BiocnnError(
                    f"IDX file {path} has magic number 0x{magic:08x} ({file_ndim} dimensions); "
                    f"expected 0x{idx_magic(ndim):08x} ({ndim} dimensions)"
                )
            if file_ndim == 0:
                raise BiocnnError(f"IDX file {path} declares 0 dimensions")
            size_bytes = stream.read(4 * file_ndim)
            if len(size_bytes) < 4 * file_ndim:
                raise BiocnnError(f"IDX file {path} is truncated inside its dimension header")
            shape = tuple(int(s) for s in np.frombuffer(size_bytes, dtype=">u4"))
            data = np.empty(shape, dtype=np.uint8)
            got = _read_exact(stream, memoryview(data.reshape(-1)))
            if got < data.size:
                raise BiocnnError(
                    f"IDX file {path} is truncated: header {shape} needs {data.size} data bytes, "
                    f"found {got}"
                )
            if stream.read(1):
                raise BiocnnError(
                    f"IDX file {path} has trailing bytes after the {data.size} data bytes "
                    f"of shape {shape}"
                )
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BiocnnError(f"IDX file {path} is a corrupt gzip stream: {exc}") from exc
    except OSError as exc:
        raise BiocnnError(f"cannot read IDX file {path}: {exc}") from exc
    return data


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically write a uint8 array as an IDX file; gzip-compressed when ``path`` ends in ``.gz``.

    Parameters
    ----------
    path
        Destination file. Parent directories are created.
    array
        uint8 array with 1 to 255 dimensions, each smaller than 2**32, e.g. labels (N,) or
        images (N, H, W).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BiocnnError
        Wrong dtype or unsupported shape (nothing is written).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise BiocnnError(f"cannot write IDX file {path}: array dtype is {array.dtype}, not uint8")
    if not 1 <= array.ndim <= 255 or any(s >= 2**32 for s in array.shape):
        raise BiocnnError(f"cannot write IDX file {path}: unsupported shape {array.shape}")
    header = idx_magic(array.ndim).to_bytes(4, "big") + np.asarray(array.shape, ">u4").tobytes()
    payload = np.ascontiguousarray(array).tobytes()
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            # mtime=0 and no file name: identical arrays give byte-identical files.
            with (
                tmp.open("wb") as raw,
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as out,
            ):
                out.write(header)
                out.write(payload)
        else:
            tmp.write_bytes(header + payload)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Return the lowercase hex SHA256 of the bytes of ``path`` (as stored, not decompressed)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                digest.update(block)
    except FileNotFoundError:
        raise BiocnnError(f"file {path} not found") from None
    except OSError as exc:
        raise BiocnnError(f"cannot read {path}: {exc.strerror}") from exc
    return digest.hexdigest()


def read_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{file name: lowercase hex digest}``.

    Each non-blank line is ``<64 hex digits><space><space or *><file name>``.

    Raises
    ------
    BiocnnError
        Missing file or a malformed line (the message gives the line number).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise BiocnnError(f"checksum file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BiocnnError(f"cannot read checksum file {path}: {exc}") from exc
    sums: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        digest, name = line[:64].lower(), line[66:]
        valid = (
            len(line) > 66
            and line[64] == " "
            and line[65] in " *"
            and all(c in "0123456789abcdef" for c in digest)
        )
        if not valid:
            raise BiocnnError(f"checksum file {path} line {number} is not '<sha256>  <name>'")
        sums[name] = digest
    return sums


def verify_sha256(files: Iterable[str | os.PathLike], sums_file: str | os.PathLike) -> None:
    """Check each file's SHA256 against its entry (by file name) in ``sums_file``.

    Parameters
    ----------
    files
        Files to check; each must be listed in ``sums_file`` under its base name.
    sums_file
        A ``sha256sum``-style file (see :func:`read_sha256sums`).

    Raises
    ------
    BiocnnError
        A file not listed in ``sums_file``, missing, or whose digest differs (names the file).
    """
    sums = read_sha256sums(sums_file)
    for file in files:
        file = Path(file)
        expected = sums.get(file.name)
        if expected is None:
            raise BiocnnError(f"{file} is not listed in checksum file {sums_file}")
        actual = sha256_file(file)
        if actual != expected:
            raise BiocnnError(
                f"SHA256 mismatch for {file}: expected {expected} from {sums_file}, got {actual}"
            )
