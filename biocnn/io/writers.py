"""Writers: per-image CSV and MRC files (images, stacks, volumes) written sequentially.

Both stream: the CSV :data:`CSV_ROWS` rows at a time, the stack block by block, so memory
stays flat for any number of images. Both are atomic (written under a temporary name and
renamed; the temporary file is removed on any error, a full disk is one line naming the
file).

The stack is written with plain sequential ``write`` calls after a header, never through a
memory map: a full disk then fails a ``write`` with ENOSPC (one line) instead of killing
the process with SIGBUS when a mapped page cannot be stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mrcfile.dtypes import HEADER_DTYPE

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError

__all__ = ["CSV_ROWS", "probability_columns", "write_csv", "stack_header", "write_stack",
           "write_mrc"]

#: Rows per CSV chunk.
CSV_ROWS = 4096


def probability_columns(class_names: Sequence[str], prefix: str = "p_") -> list[str]:
    """One column name per class, ``<prefix><name>`` with non-word characters as ``_``
    (numbered ``<prefix>1...`` when two names would collide)."""
    import re

    cols = [prefix + re.sub(r"\W", "_", n) for n in class_names]
    return cols if len(set(cols)) == len(cols) else [f"{prefix}{i + 1}" for i in range(len(class_names))]


def write_csv(
    path: str | os.PathLike,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    name: Callable[[int], str],
) -> Path:
    """Write ``index, image, predicted, p_<class>...``, one row per image.

    Parameters
    ----------
    probabilities
        ``(N, K)`` class probabilities.
    name
        Image name of row ``i`` (e.g. ``000012@stack.mrcs``).
    """
    cols = probability_columns(class_names)
    n = len(probabilities)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        for start in range(0, max(n, 1), CSV_ROWS):
            stop = min(start + CSV_ROWS, n)
            p = probabilities[start:stop]
            frame = pd.DataFrame({
                "index": np.arange(start, stop),
                "image": [name(i) for i in range(start, stop)],
                "predicted": [class_names[c] for c in p.argmax(1)] if len(p) else [],
                **{c: p[:, j] for j, c in enumerate(cols)},
            })
            frame.to_csv(fh, header=start == 0, index=False, float_format="%.6g")
    return Path(path)


def stack_header(
    count: int, shape: tuple[int, int], apix: float, stats: tuple[float, float, float, float],
    volume: bool = False,
) -> bytes:
    """The 1024-byte MRC2014 header of a little-endian float32 image stack or volume.

    ``count`` images (sections) of ``shape = (H, W)`` at ``apix`` Å (0 = unknown). A stack
    (or a single image) has space group 0 and ``mz = 1``, as RELION and cryoSPARC write
    them; a ``volume`` space group 1 and ``mz = count``. ``stats`` are ``(min, max, mean, rms)``.
    """
    h, w = shape
    mz = count if volume else 1
    head = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<"))
    head["nx"], head["ny"], head["nz"] = w, h, count
    head["mode"] = 2
    head["mx"], head["my"], head["mz"] = w, h, mz
    head["cella"] = (w * apix, h * apix, mz * apix)
    head["cellb"] = (90.0, 90.0, 90.0)
    head["mapc"], head["mapr"], head["maps"] = 1, 2, 3
    head["dmin"], head["dmax"], head["dmean"], head["rms"] = stats
    head["ispg"] = 1 if volume else 0
    head["exttyp"] = b"MRCO"
    head["nversion"] = 20140
    head["map"] = b"MAP "
    head["machst"] = (0x44, 0x44, 0, 0)  # little endian
    return head.tobytes()


def write_stack(
    path: str | os.PathLike,
    blocks: Iterable[np.ndarray],
    count: int,
    shape: tuple[int, int],
    apix: float = 0.0,
    volume: bool = False,
) -> Path:
    """Write ``count`` images, arriving as ``(b, H, W)`` blocks, as one float32 MRC stack
    (a ``volume`` of ``count`` sections when asked).

    The header is written first with placeholder statistics, every block is appended with a
    plain ``write`` (statistics accumulated in float64 on the way), and the header is
    rewritten at the end. Memory: one block plus one image in float64.

    Raises
    ------
    BiocnnError
        A block of another image size, a count that does not match, a full disk or another
        write error; the temporary file is removed and nothing appears at ``path``.
    """
    shape = (int(shape[0]), int(shape[1]))
    lo, hi, total, total_sq, seen = np.inf, -np.inf, 0.0, 0.0, 0
    try:
        with atomic_path(path, suffix=Path(path).suffix or ".mrc") as tmp, open(tmp, "wb") as fh:
            fh.write(stack_header(count, shape, apix, (0.0, 0.0, 0.0, 0.0), volume))
            for block in blocks:
                block = np.asarray(block, dtype="<f4")
                if block.shape[1:] != shape:
                    raise BiocnnError(f"{os.fspath(path)}: an image of {block.shape[1]}x"
                                      f"{block.shape[2]} px in a stack of {shape[0]}x{shape[1]}")
                if not len(block):
                    continue
                fh.write(np.ascontiguousarray(block).data)
                seen += len(block)
                lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
                for image in block:  # float64 sums image by image: no float64 copy of the block
                    total += float(image.sum(dtype=np.float64))
                    total_sq += float(np.square(image, dtype=np.float64).sum())
            if seen != count:
                raise BiocnnError(f"{os.fspath(path)}: {seen} images written, {count} expected")
            n = max(count * shape[0] * shape[1], 1)
            mean = total / n
            rms = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))
            fh.seek(0)
            fh.write(stack_header(count, shape, apix,
                                  (lo if seen else 0.0, hi if seen else 0.0, mean, rms), volume))
    except OSError as exc:
        raise BiocnnError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from exc
    return Path(path)


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
        Mark a 3D array as an image stack (``ispg = 0``, ``mz = 1``) rather than a volume.

    Raises :class:`BiocnnError` naming ``path`` when it cannot be written (e.g. disk full);
    no partial file is left behind.
    """
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise BiocnnError(f"{os.fspath(path)}: cannot write a {arr.ndim}D array as MRC")
    block = arr[None] if arr.ndim == 2 else arr
    return write_stack(path, [block], len(block), block.shape[1:], apix,
                       volume=arr.ndim == 3 and not is_stack)
