"""Safe output: atomic files, checked destinations, one-line errors for full disks.

Every file is written to a temporary sibling and renamed into place, so a crash or an
error never leaves a half-written file at a requested path; the temporary file is removed
on any error. Files and folders get the permissions the umask allows (0644 / 0755 by
default), like any other tool's output on a shared disk. A full disk (ENOSPC) or a file
size limit (EFBIG, SIGXFSZ ignored) becomes one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from biocnn.errors import BiocnnError, OptionError

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_json",
    "write_text",
    "check_outputs",
    "disk_errors",
    "umask_mode",
    "RunLock",
]

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

if hasattr(signal, "SIGXFSZ"):  # a file size limit then fails the write with EFBIG instead
    with contextlib.suppress(ValueError):  # not in the main thread: leave the handler be
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def umask_mode(base: int = 0o666) -> int:
    """``base`` permissions less the process umask (0o644 for files with umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or file-size limit while writing ``path`` into one BiocnnError line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            why = "disk full" if exc.errno != errno.EFBIG else "file size limit reached"
            raise BiocnnError(f"cannot write {path}: {why}") from None
        raise
    except RuntimeError as exc:  # torch.save reports ENOSPC as "[enforce fail ...]"
        text = str(exc)
        if "enforce fail" in text or "No space left" in text or "file write failed" in text:
            raise BiocnnError(f"cannot write {path}: disk full or file size limit reached") from None
        raise


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
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
            dir=path.parent,
        )
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_errors(path):
            yield tmp_path
            os.chmod(tmp_path, umask_mode())  # mkstemp makes 0600 files
            os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               marker: str | None = None) -> Iterator[Path]:
    """Build a directory under a temporary name; move it to ``path`` only on success.

    ``overwrite`` replaces an existing non-empty ``path`` only if it holds ``marker`` (the
    file that shows it is an earlier output of the same command): a folder of the user's
    own files is never deleted.

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
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise BiocnnError(f"output directory {path} exists and is not empty")
        if marker is None or not (path / marker).is_file():
            raise BiocnnError(f"output directory {path} is not an earlier output of this command "
                              f"(no {marker or 'marker file'}); not replacing it, even with "
                              "--overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700 folders
    except OSError as exc:
        raise BiocnnError(f"cannot write output directory {path}: {exc.strerror}") from exc
    try:
        with disk_errors(path):
            yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _paths(value: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    """A path, or a field's file and those written beside it, as paths (None, "" skipped)."""
    if value is None or isinstance(value, (str, os.PathLike)):
        value = [] if value is None else [value]
    return [Path(p) for p in value if p is not None and str(p) != ""]


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike] | None],
    inputs: Iterable[str | os.PathLike] = (),
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Check requested output files before any work; nothing is created.

    Parameters
    ----------
    outputs
        ``{field: path}``: the config fields that name output files (e.g.
        ``{"csv": "pred.csv"}``); None values are skipped. A sequence gives the field's file
        and the files written beside it (``{"out_stack": ("sel.mrcs", "sel.star")}``), each
        checked under the field's name.
    inputs
        Files the command reads (inputs, the checkpoint): no output may be one of them.
    overwrite
        Allow replacing existing output files (the config field ``overwrite``).

    Returns
    -------
    dict
        ``{field: Path}`` of the outputs given (the first path of a sequence).

    Raises
    ------
    OptionError
        One line naming the field (the CLI shows its flag): an output that is an input, two
        fields naming one file, an existing file without ``overwrite``, a folder, or an
        unwritable parent.
    """
    given = {field: paths for field, value in outputs.items() if (paths := _paths(value))}
    read = [Path(p) for p in inputs]
    seen: dict[Path, str] = {}
    for field, paths in given.items():
        for path in paths:
            _check_output(field, path, read, seen, overwrite)
    return {field: paths[0] for field, paths in given.items()}


def _check_output(field: str, path: Path, read: Sequence[Path], seen: dict[Path, str],
                  overwrite: bool) -> None:
    """One output file of :func:`check_outputs`; ``seen`` maps resolved paths to fields."""
    for src in read:
        if _same_file(path, src):
            raise OptionError(field, path, "is one of the inputs; choose another file")
    key = path.resolve()
    if key in seen:
        raise OptionError(field, path, f"is also the {seen[key]} output")
    seen[key] = field
    if path.is_dir():
        raise OptionError(field, path, "is a directory")
    if path.exists() and not overwrite:
        raise OptionError(field, path, "exists", fix="overwrite")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(field, path, f"cannot write, {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise OptionError(field, path, f"cannot write, {parent} is not writable")


class RunLock:
    """An exclusive lock on a run folder, held for the run's life: a second run writing the
    same folder is refused in one line; the OS drops the lock when its process dies, and
    the next run takes over such a stale lock with a warning naming the dead process.

    The lock is ``DIR/.biocnn.lock`` (holding the owner's pid), locked with ``fcntl.flock``
    (``msvcrt.locking`` on Windows). The folder is created if needed.
    """

    NAME = ".biocnn.lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115  held open for the run's life
        except OSError as exc:
            raise BiocnnError(f"cannot write run folder {self.folder}: {exc.strerror}") from None
        try:
            _lock_file(fh)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise BiocnnError(f"{self.folder}: another biocnn run (pid {owner}) is writing this "
                              "folder; wait for it or choose another --out") from None
        fh.seek(0)
        stale = fh.read().strip()
        if stale:
            import warnings

            warnings.warn(f"{self.folder}: taking over the lock of a run that ended without "
                          f"releasing it (pid {stale})", stacklevel=2)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError):
            fh.seek(0)
            fh.truncate()  # an empty lock file is a clean release, not a stale one
            fh.flush()
        fh.close()  # releases the OS lock; the file stays (deleting it would race a waiter)


def _lock_file(fh: Any) -> None:
    """Lock an open file exclusively without waiting; OSError if another process holds it."""
    if os.name == "nt":  # pragma: no cover  exercised on Windows only
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
