"""RELION STAR particle tables: read (RELION 3.0 and 3.1+) and write (RELION 3.1).

A RELION 3.0 file has one data block of particles. A RELION 3.1+ file has a
``data_optics`` block (one row per optics group, with ``rlnImagePixelSize``) and a
``data_particles`` block whose ``rlnOpticsGroup`` column points into it. Particle images
are named ``index@stack.mrcs`` with a 1-based index, or by a plain file name for a
single-image file; relative paths are resolved against the STAR file's folder, then its
parent folders (a RELION project) and the working directory.

Reading is done here rather than by ``starfile`` so that every defect is one line that
says what is wrong and where: a file that is not UTF-8 is read as Latin-1 with a warning
(RELION itself reads bytes), a row with too many or too few values names its line and
says that values with spaces must be quoted, an image index is bounded (1 to 2^31 - 1,
the most sections an MRC file can hold), and binary files of other formats are refused by
name. Loops are still parsed by pandas' C reader, so large tables read quickly.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from biocnn.atomic import atomic_path
from biocnn.errors import BiocnnError
from biocnn.io import FORMAT_NAMES, refuse_unsupported, sniff_bytes

__all__ = [
    "StarTable",
    "read_star",
    "read_star_blocks",
    "write_star",
    "write_star_blocks",
    "parse_image_name",
    "format_image_name",
    "optics_block",
    "StarWarning",
    "MAX_INDEX",
    "image_groups",
    "duplicates",
]

IMAGE_COLUMN = "rlnImageName"

#: Largest image index (``index@file``): an MRC file holds at most 2^31 - 1 sections.
MAX_INDEX = 2**31 - 1
#: Enough digits to write every float read from a STAR file back unchanged.
_FLOAT_FORMAT = "%.12g"

#: Most columns read from one loop (RELION writes under 100); bounds a hostile file's cost.
MAX_COLUMNS = 2000
#: Longest image path accepted (Linux PATH_MAX).
MAX_PATH = 4096

#: Columns kept as text even when every value looks like a number.
_TEXT_COLUMNS = frozenset({
    "rlnImageName", "rlnImageOriginalName", "rlnMicrographName", "rlnMicrographMovieName",
    "rlnOpticsGroupName", "rlnCtfImage", "rlnReferenceImage", "rlnGroupName",
})
#: One STAR value: a quoted string (either quote) or a run of non-blanks.
_TOKEN = re.compile(r""""[^"]*"|'[^']*'|\S+""")


class StarWarning(UserWarning):
    """A STAR file defect that was tolerated (e.g. text that is not UTF-8)."""


def parse_image_name(name: str, star: str | os.PathLike = "STAR file") -> tuple[int, str]:
    """Split a RELION image name into ``(section, path)`` with a 0-based section.

    ``"000012@Extract/a.mrcs"`` -> ``(11, "Extract/a.mrcs")``; ``"img.mrc"`` -> ``(0, "img.mrc")``.
    The index must be ASCII digits in 1..:data:`MAX_INDEX`. ``star`` names the file in the
    one-line :class:`BiocnnError` raised for a malformed name.
    """
    name = str(name).strip()
    if len(name) > MAX_PATH + 20:
        raise BiocnnError(f"{star}: image name of {len(name)} characters starting {name[:60]!r} is too long")
    if "@" not in name:
        return 0, name
    index, _, path = name.partition("@")
    if not re.fullmatch(r"[0-9]+", index) or not path:
        raise BiocnnError(f"{star}: bad image name {name[:200]!r} (want index@file, index >= 1)")
    value = int(index) if len(index) <= 12 else MAX_INDEX + 1  # never parse a huge number
    if not 1 <= value <= MAX_INDEX:
        raise BiocnnError(
            f"{star}: bad image name {name[:200]!r} (index {index[:30]} out of range 1..{MAX_INDEX})"
        )
    return value - 1, path


def format_image_name(section: int, path: str | os.PathLike) -> str:
    """Inverse of :func:`parse_image_name` for stacks: ``(11, "a.mrcs")`` -> ``"000012@a.mrcs"``."""
    return f"{section + 1:06d}@{os.fspath(path)}"


@dataclass(eq=False)
class StarTable:
    """A particle table read from a STAR file.

    Attributes
    ----------
    path
        The STAR file.
    particles
        One row per particle; always has ``rlnImageName``.
    optics
        The optics table (RELION 3.1+) or None (RELION 3.0).
    """

    path: Path
    particles: pd.DataFrame
    optics: pd.DataFrame | None
    _found: dict[str, Path] = field(default_factory=dict, repr=False)
    _bases: tuple[Path, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.particles)

    def column(self, name: str) -> pd.Series:
        """The particle column ``name``; a missing column is a one-line :class:`BiocnnError`."""
        if name not in self.particles.columns:
            cols = ", ".join(map(str, self.particles.columns))
            raise BiocnnError(f"{self.path}: no column {name!r} in the particles (have: {cols})")
        return self.particles[name]

    def image_refs(self) -> tuple[list[Path], np.ndarray]:
        """Resolve every ``rlnImageName``.

        Returns
        -------
        paths : list[Path]
            ``(N,)`` image files; relative names are looked up next to the STAR file,
            then in its parent folders (a RELION project) and the working directory.
        sections : np.ndarray
            ``(N,)`` int64 0-based section in each file.
        """
        paths: list[Path] = []
        sections = np.empty(len(self.particles), dtype=np.int64)
        resolved: dict[str, Path] = {}
        for i, name in enumerate(self.column(IMAGE_COLUMN).tolist()):
            sections[i], rel = parse_image_name(name, self.path)
            if rel not in resolved:
                resolved[rel] = self._locate(rel)
            paths.append(resolved[rel])
        return paths, sections

    def _locate(self, rel: str | Path) -> Path:
        """Find a relative image path: next to the STAR file first, then (RELION projects
        name stacks relative to the project folder, e.g. ``Extract/job007/...`` from
        ``Class2D/job012/run_data.star``) in each parent folder and the working directory.
        Falls back to the STAR file's folder, so a missing stack is reported there."""
        key = str(rel)
        if key in self._found:  # found before (misses are looked up again)
            return self._found[key]
        rel = Path(rel)
        if rel.is_absolute():
            return rel
        if not self._bases:  # the STAR's folder, its parents (a RELION project), the cwd
            self._bases = (self.path.parent, *self.path.parent.resolve().parents, Path.cwd())
        for base in self._bases:
            if _exists(os.path.join(base, key)):  # strings: pathlib costs ~100 µs a file here
                self._found[key] = base / rel
                return base / rel
        return self.path.parent / rel

    def pixel_sizes(self) -> np.ndarray:
        """``(N,)`` float64 pixel size per particle in Å (0 = not in the STAR file).

        In order: a ``rlnImagePixelSize`` column of the particles (some tools write 3.1
        columns in one block); ``rlnImagePixelSize`` of the particle's optics group (RELION
        3.1+); ``rlnDetectorPixelSize`` (µm) * 1e4 / ``rlnMagnification`` (RELION 3.0);
        a ``rlnPixelSize`` column.
        """
        parts = self.particles
        if "rlnImagePixelSize" in parts.columns:
            return _positive(parts["rlnImagePixelSize"])
        if self.optics is not None and "rlnImagePixelSize" in self.optics.columns:
            if "rlnOpticsGroup" in parts.columns and "rlnOpticsGroup" in self.optics.columns:
                table = dict(
                    zip(
                        _integers(self.optics["rlnOpticsGroup"], self.path, "rlnOpticsGroup"),
                        _positive(self.optics["rlnImagePixelSize"]),
                        strict=True,
                    )
                )
                groups = _integers(parts["rlnOpticsGroup"], self.path, "rlnOpticsGroup")
                missing = sorted(set(groups.tolist()) - set(table))
                if missing:
                    raise BiocnnError(f"{self.path}: optics group {missing[0]} not in data_optics")
                return np.array([table[g] for g in groups.tolist()], dtype=np.float64)
            if len(self.optics) == 1:
                return np.full(len(parts), _positive(self.optics["rlnImagePixelSize"])[0])
        if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(parts.columns):
            det = _positive(parts["rlnDetectorPixelSize"])
            mag = _positive(parts["rlnMagnification"])
            return np.divide(det * 1e4, mag, out=np.zeros_like(det), where=mag > 0)
        if "rlnPixelSize" in parts.columns:
            return _positive(parts["rlnPixelSize"])
        return np.zeros(len(parts))

    def pixel_size_mismatches(
        self,
        header_apix: Callable[[Path], float] | Mapping[Path, float] | None = None,
        rtol: float = 0.01,
    ) -> list[tuple[Path, float, float]]:
        """Image files whose header pixel size disagrees with the STAR's by more than ``rtol``.

        Parameters
        ----------
        header_apix
            The header pixel size of an image file (Å, 0 = unknown), as a mapping or a
            function; default: read it with :func:`biocnn.io.mrc.inspect_mrc`.
        rtol
            Relative tolerance (0.01 = the 1 % of issue 13).

        Returns
        -------
        list of ``(file, star_apix, header_apix)``
            One entry per file and STAR pixel size, in first-seen order. Files or rows with
            an unknown pixel size (0) on either side are not compared; the STAR value is the
            one to use (see :meth:`pixel_sizes`).
        """
        if header_apix is None:
            from biocnn.io.mrc import inspect_mrc

            def header_apix(p: Path) -> float:
                return inspect_mrc(p, as_volume=False).apix

        lookup = header_apix.get if isinstance(header_apix, Mapping) else header_apix
        paths, _ = self.image_refs()
        star = self.pixel_sizes()
        seen: dict[tuple[Path, float], None] = {}
        for p, a in zip(paths, star.tolist(), strict=True):
            seen.setdefault((p, a), None)
        out: list[tuple[Path, float, float]] = []
        headers: dict[Path, float] = {}
        for p, a in seen:
            if a <= 0:
                continue
            if p not in headers:
                headers[p] = float(lookup(p) or 0.0)
            h = headers[p]
            if h > 0 and abs(h - a) > rtol * a:
                out.append((p, a, h))
        return out

    def image_groups(self) -> np.ndarray:
        """``(N,)`` int64: for each row, the first row showing the same image (same section
        of the same file, paths normalised; ``i`` for a row whose image is unique). Rows with
        equal values must stay in one data split."""
        return image_groups(*self.image_refs())

    def duplicate_images(self) -> np.ndarray:
        """``(N,)`` bool: True for every row whose image also appears in another row (all
        copies, the first included)."""
        return duplicates(self.image_groups())


def image_groups(paths: list[Path], sections: np.ndarray) -> np.ndarray:
    """``(N,)`` int64 index of the first of the rows ``(paths[i], sections[i])`` that shows
    the same image as row ``i`` (paths compared after ``abspath`` + ``normpath``)."""
    norm = {p: os.path.normpath(os.path.abspath(p)) for p in set(paths)}
    keys = [f"{s}@{norm[p]}" for p, s in zip(paths, np.asarray(sections).tolist(), strict=True)]
    codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
    first = np.full(len(uniques), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes), dtype=np.int64))
    return first[codes]


def duplicates(groups: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: rows of :func:`image_groups` ``groups`` that share their group."""
    counts = np.bincount(groups, minlength=len(groups))
    return counts[groups] > 1


def _exists(path: str) -> bool:
    """``os.path.exists`` that answers False for names the OS refuses (too long, NUL bytes)."""
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def _positive(col: pd.Series) -> np.ndarray:
    """A numeric column as float64 with non-finite or negative values as 0 (unknown)."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(values) & (values > 0), values, 0.0)


def _integers(col: pd.Series, path: Path, name: str) -> np.ndarray:
    """An integer column as int64; anything else is a one-line error."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not (np.isfinite(values).all() and (values == np.round(values)).all()) or (
        np.abs(values) > 2**53
    ).any():
        raise BiocnnError(f"{path}: column {name} must hold integers")
    return values.astype(np.int64)


def _decode(path: Path, raw: bytes) -> str:
    """STAR text from bytes: UTF-8 (a BOM allowed), else Latin-1 with one warning; binary
    files of other formats are refused by name."""
    kind = sniff_bytes(raw[:1024], path)
    refuse_unsupported(path, kind)
    if kind in ("mrc", "cs"):
        raise BiocnnError(f"{path}: {FORMAT_NAMES[kind]} file, not a STAR file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BiocnnError(f"{path}: UTF-16 text; save the STAR file as UTF-8 (or ASCII), as RELION reads")
    if b"\0" in raw:
        raise BiocnnError(f"{path}: not a STAR file (binary data: NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        warnings.warn(
            f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); read as Latin-1",
            StarWarning,
            stacklevel=3,
        )
        return raw.decode("latin-1")


def _count_values(line: str) -> int:
    """Number of STAR values on a data line (quoted values may hold spaces)."""
    if '"' not in line and "'" not in line:
        return len(line.split())
    return len(_TOKEN.findall(line))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _numericise(value: str) -> str | int | float:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Columns of numbers become int64/float64 (like starfile); text columns stay text."""
    columns: dict[str, pd.Series] = {}
    for name in table.columns:
        columns[name] = table[name]
        if name not in _TEXT_COLUMNS and table[name].dtype.kind not in "iufb":
            try:
                columns[name] = pd.to_numeric(table[name])
            except (ValueError, TypeError):
                pass
    return pd.DataFrame(columns, copy=False)  # built once: assigning column by column is quadratic


def _loop_table(
    path: Path, block: str, labels: list[str], rows: list[str], first_line: int
) -> pd.DataFrame:
    """Parse validated loop rows with pandas' C reader (quotes of either kind honoured)."""
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=np.float64) for name in labels})
    text = "\n".join(rows)
    if "'" in text:  # pandas knows one quote character; RELION writes either
        text = text.replace("'", '"')
    try:
        table = pd.read_csv(
            StringIO(text), sep=r"\s+", header=None, names=labels,
            dtype={name: str for name in labels if name in _TEXT_COLUMNS},
            keep_default_na=False, na_filter=False, quotechar='"', engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise BiocnnError(f"{path}: data_{block} loop from line {first_line}: {reason}") from exc
    return _typed(table)


@dataclass
class _Block:
    """One data block as scanned: a loop (labels and validated rows) or key-value pairs."""

    labels: list[str]
    rows: list[str]
    first_line: int
    pairs: dict[str, str | int | float]

    @property
    def columns(self) -> list[str]:
        return self.labels if self.labels else list(self.pairs)


def _scan_star(path: Path, text: str) -> dict[str, _Block]:
    """Every data block of a STAR text, scanned and validated but not yet parsed.

    Lines before the first ``data_`` and comment lines are ignored; a loop's rows must each
    have one value per ``_label`` (else a one-line error naming the line).
    """
    lines = text.splitlines()
    blocks: dict[str, _Block] = {}
    current: _Block | None = None
    name = ""
    i, n = 0, len(lines)
    while i < n:
        s = lines[i].strip()
        i += 1
        if not s or s.startswith("#"):
            continue
        if s.startswith("data_"):
            name = s[5:].split()[0] if s[5:].strip() else ""
            current = blocks[name] = _Block([], [], i, {})
            continue
        if current is None:
            continue  # text before the first data block
        if s.startswith("loop_"):
            labels: list[str] = []
            while i < n and (lines[i].strip().startswith("_") or not lines[i].strip()):
                label = lines[i].strip()
                if label:
                    labels.append(label.split()[0][1:])
                i += 1
            if not labels:
                raise BiocnnError(f"{path}: loop_ on line {i} of data_{name} has no _labels")
            if len(labels) > MAX_COLUMNS:
                raise BiocnnError(
                    f"{path}: data_{name} has {len(labels)} columns (at most {MAX_COLUMNS} are read)"
                )
            dup = sorted(k for k, v in Counter(labels).items() if v > 1)
            if dup:
                raise BiocnnError(f"{path}: data_{name} lists column _{dup[0]} twice")
            current.labels, current.first_line = labels, i + 1
            while i < n:
                row = lines[i].strip()
                if row.startswith(("data_", "loop_", "_")):
                    break
                i += 1
                if not row or row.startswith("#"):
                    continue
                count = _count_values(row)
                if count != len(labels):
                    raise BiocnnError(
                        f"{path}: line {i} has {count} values but data_{name} has "
                        f"{len(labels)} columns (values with spaces must be quoted)"
                    )
                current.rows.append(row)
            continue
        if s.startswith("_"):
            tokens = _TOKEN.findall(s)
            if len(tokens) != 2:
                raise BiocnnError(
                    f"{path}: line {i} should be '_label value' in data_{name} "
                    "(values with spaces must be quoted)"
                )
            if len(current.pairs) >= MAX_COLUMNS:
                raise BiocnnError(f"{path}: data_{name} has more than {MAX_COLUMNS} values")
            current.pairs[tokens[0][1:]] = _numericise(_unquote(tokens[1]))
            continue
        raise BiocnnError(f"{path}: line {i}: {s[:60]!r} is neither a _label nor in a loop_")
    return blocks


def _table(path: Path, name: str, block: _Block) -> pd.DataFrame:
    """A scanned block as a DataFrame (a key-value block as one row)."""
    if block.labels:
        return _loop_table(path, name, block.labels, block.rows, block.first_line)
    return pd.DataFrame([block.pairs]) if block.pairs else pd.DataFrame()


def read_star_blocks(path: str | os.PathLike, names: Iterable[str]) -> dict[str, pd.DataFrame]:
    """The data blocks ``names`` (without ``data_``) of any STAR file that has them, each as
    a DataFrame (a key-value block as one row); the other blocks are scanned, not parsed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BiocnnError(f"cannot read {path}: {exc.strerror}") from None
    blocks = _scan_star(path, _decode(path, raw))
    return {n: _table(path, n, blocks[n]) for n in names if n in blocks}


def read_star(path: str | os.PathLike) -> StarTable:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    The particle block is ``data_particles`` if present, else the only block that has an
    ``rlnImageName`` column; ``data_optics`` is kept when present (other blocks are
    validated but not parsed). Errors (missing file, other formats, malformed rows, no
    particle block) are one-line :class:`BiocnnError`; a file that is not UTF-8 is read
    as Latin-1 with a :class:`StarWarning`.
    """
    path = Path(path)
    if not path.is_file():
        raise BiocnnError(f"STAR file {path} not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BiocnnError(f"cannot read {path}: {exc.strerror}") from exc
    blocks = _scan_star(path, _decode(path, raw))
    if "particles" in blocks:
        name = "particles"
    else:
        candidates = [n for n, b in blocks.items() if IMAGE_COLUMN in b.columns]
        if len(candidates) != 1:
            names = ", ".join(repr(n) for n in list(blocks)[:10]) + (", ..." if len(blocks) > 10 else "")
            raise BiocnnError(
                f"{path}: no particle block with {IMAGE_COLUMN} "
                f"(blocks: {names or 'none; not a STAR file?'})"
            )
        name = candidates[0]
    particles = _table(path, name, blocks[name])
    if IMAGE_COLUMN not in particles.columns:
        raise BiocnnError(f"{path}: the particle block has no {IMAGE_COLUMN} column")
    optics = _table(path, "optics", blocks["optics"]) if "optics" in blocks else None
    return StarTable(path=path, particles=particles.reset_index(drop=True), optics=optics)


def optics_block(apix: float, image_size: int, name: str = "opticsGroup1") -> pd.DataFrame:
    """A one-group RELION 3.1 optics table for 2D images of ``image_size`` px at ``apix`` Å."""
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": [name],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [float(apix)],
            "rlnImageSize": [int(image_size)],
            "rlnImageDimensionality": [2],
        }
    )


def write_star_blocks(path: str | os.PathLike, blocks: Mapping[str, pd.DataFrame]) -> Path:
    """Atomically write STAR data blocks, each preceded by RELION's ``# version 30001`` line
    (RELION reads the table version from it), floats with 12 significant digits so values
    read from a STAR file are written back unchanged. Streams block files, never holding
    the text of a large table in memory."""
    with atomic_path(path, suffix=".star") as tmp, open(tmp, "wb") as out:
        for name, table in blocks.items():
            part = tmp.with_name(tmp.name + f".{name}")
            try:
                starfile.write({name: table}, part, float_format=_FLOAT_FORMAT)
                out.write(b"\n# version 30001\n\n")
                with open(part, "rb") as fh:
                    started = False  # starfile's header comment and blank lines are dropped
                    for line in fh:
                        started = started or line.startswith(b"data_")
                        if started:
                            out.write(line)
            finally:
                part.unlink(missing_ok=True)
    return Path(path)


def write_star(
    path: str | os.PathLike,
    particles: pd.DataFrame,
    optics: pd.DataFrame | None = None,
    *,
    apix: float = 0.0,
    image_size: int = 0,
) -> Path:
    """Atomically write ``data_optics`` + ``data_particles`` as RELION 3.1+ does
    (:func:`write_star_blocks`).

    Parameters
    ----------
    path
        Destination ``.star`` file.
    particles
        One row per particle (normally with ``rlnImageName``). A missing
        ``rlnOpticsGroup`` column is added with every particle in group 1.
    optics
        Optics table to write as is (e.g. the one read from the input STAR file); if None,
        a single group is made from ``apix`` and ``image_size`` (see :func:`optics_block`).
    apix, image_size
        Pixel size (Å) and box (px) of the synthesised optics group.
    """
    if optics is None:
        optics = optics_block(apix, image_size)
    if "rlnOpticsGroup" not in particles.columns:
        particles = particles.assign(rlnOpticsGroup=1)
    return write_star_blocks(path, {"optics": optics, "particles": particles})
