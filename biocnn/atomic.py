"""Atomic output: write to a temporary sibling, then rename into place.

A crash or a bad-input error never leaves a half-written file or run directory behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from biocnn.errors import BiocnnError

__all__ = ["atomic_path", "atomic_dir", "write_json", "write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Parameters
    ----------
    path
        Final destination file.
    suffix
        Suffix for the temporary file (some writers infer the format from it).
        Defaults to the suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; move it to ``path`` only on success.

    On any exception the temporary directory is removed, so no partial output
    directory is left behind. Under ``torchrun`` only rank 0 publishes ``path``; other
    ranks get a scratch directory that is deleted afterwards.
    """
    from biocnn.runtime import is_main_process

    path = Path(path)
    if not is_main_process():  # under torchrun only rank 0 publishes; the others write scratch
        with tempfile.TemporaryDirectory(prefix="biocnn-rank-") as scratch:
            yield Path(scratch)
        return
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise BiocnnError(f"output directory {path} exists and is not empty")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise BiocnnError(f"cannot write output directory {path}: {exc.strerror}") from exc
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
