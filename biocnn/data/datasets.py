"""Datasets of MRC images for training, evaluation and prediction.

A dataset is an **index table** (:class:`ImageIndex`): file paths plus one row per image
``(file id, view kind, section, pixel size)`` held in small numpy arrays. No pixels and no
open files are held, so a dataset pickles small and forks cheaply into DataLoader
workers; each worker memory-maps files lazily (:func:`biocnn.io.mrc.open_mrc`).
Memory stays flat however large the stacks are.

Reading is batched (:meth:`MrcDataset.batch`, used by :func:`biocnn.data.make_loader`):
the images of a batch are grouped by file and copied out of the memory map in section
order, then resampled to the box in torch where needed. Standardisation (background
mean/std, inversion) is not done here but on the device, by the model's input module.

Sources (:func:`build_dataset`):

* a folder with one sub-folder per class, ``root/<class>/*.mrc|*.mrcs|*.map`` (class
  names sorted; every image of a stack and every view of a volume is one sample);
* a RELION STAR file (3.0 or 3.1+) whose ``rlnImageName`` rows are ``index@stack.mrcs``
  and whose ``label_column`` (default ``rlnClassNumber``) holds the label;
* unlabelled (prediction): an MRC file, a folder of MRC files, or a STAR file.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from biocnn.data.preprocess import PreprocessConfig, resample_images
from biocnn.errors import BiocnnError, OptionError
from biocnn.io.mrc import (
    MRC_SUFFIXES,
    MrcInfo,
    ViewKind,
    ViewSpec,
    inspect_mrc,
    read_sections,
    read_view,
    view_name,
)
from biocnn.io.star import read_star

__all__ = [
    "ImageIndex",
    "MrcDataset",
    "build_dataset",
    "folder_dataset",
    "star_dataset",
    "refs_dataset",
    "files_dataset",
    "stratified_split",
]


@dataclass(frozen=True, eq=False)
class ImageIndex:
    """Index table of 2D images in MRC files: row ``i`` is view ``(kind[i], section[i])``
    of file ``files[file_id[i]]``.

    Attributes
    ----------
    files
        ``(F,)`` file paths (strings).
    layouts
        ``(F,)`` ``"image"``, ``"stack"`` or ``"volume"``.
    file_id
        ``(N,)`` int32 index into ``files``.
    kind
        ``(N,)`` int8 :class:`~biocnn.io.mrc.ViewKind`.
    section
        ``(N,)`` int32 0-based section (stack image or volume slice; 0 otherwise).
    apix
        ``(N,)`` float64 pixel size in Å (0 = unknown).
    slice_axis
        Axis of volume slices/projections.
    """

    files: tuple[str, ...]
    layouts: tuple[str, ...]
    file_id: np.ndarray
    kind: np.ndarray
    section: np.ndarray
    apix: np.ndarray
    slice_axis: str = "z"

    @classmethod
    def from_infos(
        cls, infos: Sequence[MrcInfo], views: ViewSpec
    ) -> ImageIndex:
        """One row per view of each file (:meth:`ViewSpec.views`), pixel size from headers."""
        file_id, kind, section, apix = [], [], [], []
        for f, info in enumerate(infos):
            for k, s in views.views(info):
                file_id.append(f)
                kind.append(int(k))
                section.append(s)
                apix.append(info.apix)
        return cls(
            files=tuple(str(i.path) for i in infos),
            layouts=tuple(i.layout for i in infos),
            file_id=np.asarray(file_id, dtype=np.int32),
            kind=np.asarray(kind, dtype=np.int8),
            section=np.asarray(section, dtype=np.int32),
            apix=np.asarray(apix, dtype=np.float64),
            slice_axis=views.slice_axis,
        )

    def __len__(self) -> int:
        return len(self.file_id)

    def read(self, i: int) -> np.ndarray:
        """Copy image ``i`` out of its (memory-mapped) file: ``(H, W)`` float32."""
        return read_view(
            self.files[self.file_id[i]],
            int(self.kind[i]),
            int(self.section[i]),
            self.slice_axis,
        )

    def name(self, i: int) -> str:
        """Name of image ``i``: ``000012@stack.mrcs`` (1-based), ``img.mrc``,
        ``map.mrc:z=32`` or ``map.mrc:sum_z``."""
        f = int(self.file_id[i])
        return view_name(
            self.files[f], self.layouts[f], int(self.kind[i]), int(self.section[i]), self.slice_axis
        )

    def subset(self, indices: np.ndarray | Sequence[int]) -> ImageIndex:
        """The rows ``indices`` (files table shared)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageIndex(
            self.files,
            self.layouts,
            self.file_id[idx],
            self.kind[idx],
            self.section[idx],
            self.apix[idx],
            self.slice_axis,
        )


class MrcDataset(Dataset):
    """Labelled (or unlabelled) MRC images, preprocessed on the fly.

    ``dataset[i]`` is ``(image, label)``: ``image`` a ``(1, box, box)`` float32 tensor
    and ``label`` an int (-1 when unlabelled).

    Attributes
    ----------
    index
        The :class:`ImageIndex`.
    labels
        ``(N,)`` int64 class index per image (-1 = unlabelled).
    class_names
        Class names; ``labels`` index into it (empty when unlabelled).
    preprocess
        The resolved :class:`PreprocessConfig` (store ``preprocess.to_dict()`` in checkpoints).
    views
        The :class:`ViewSpec` the index was built with (store ``views.to_dict()`` too).
    source_shapes
        ``(H, W)`` of each file's images, for :meth:`bytes_per_image`.
    """

    def __init__(
        self,
        index: ImageIndex,
        labels: np.ndarray,
        class_names: Sequence[str],
        preprocess: PreprocessConfig,
        views: ViewSpec,
        source_shapes: Sequence[tuple[int, int]] = (),
    ) -> None:
        if not preprocess.is_resolved:
            raise ValueError("MrcDataset needs a resolved PreprocessConfig")
        if len(labels) != len(index):
            raise ValueError(f"{len(labels)} labels for {len(index)} images")
        self.index = index
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.views = views
        #: ``(H, W)`` of the images of each file (headers only)
        self.source_shapes = [tuple(s) for s in source_shapes]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        images, labels = self.batch([i])
        return images[0], int(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Samples ``indices`` read as one batch (PyTorch's batched-fetch protocol)."""
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.tolist(), strict=True))

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Read images ``indices`` together and resample them to the box (not standardised:
        that runs on the device, :meth:`PreprocessConfig.standardizer`).

        Returns
        -------
        images : torch.Tensor
            ``(B, 1, box, box)`` float32.
        labels : torch.Tensor
            ``(B,)`` int64 (-1 when unlabelled).
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        box = int(self.preprocess.box)  # type: ignore[arg-type]
        out = torch.empty((len(rows), 1, box, box))
        idx = self.index
        sec = idx.section[rows]
        # by file, view kind and pixel size, then section: each group is one sorted read
        fid, kind, apix = idx.file_id[rows], idx.kind[rows], idx.apix[rows]
        order = np.lexsort((sec, apix, kind, fid))
        f, k, a = fid[order], kind[order], apix[order]
        cuts = np.flatnonzero((f[1:] != f[:-1]) | (k[1:] != k[:-1]) | (a[1:] != a[:-1])) + 1
        for group in np.split(order, cuts) if len(rows) else []:
            first = rows[group[0]]
            file, view = int(idx.file_id[first]), int(idx.kind[first])
            path = idx.files[file]
            if view == ViewKind.IMAGE:
                images = read_sections(path, sec[group])
            else:
                images = np.stack([read_view(path, view, int(s), idx.slice_axis)
                                   for s in sec[group]])
            out[torch.from_numpy(group), 0] = resample_images(images, self.preprocess,
                                                              float(idx.apix[first]))
        return out, torch.from_numpy(self.labels[rows])

    def image_keys(self) -> np.ndarray:
        """``(N,)`` int64, equal for rows that read the same image of the same file."""
        idx = self.index
        return (idx.file_id.astype(np.int64) << 40) | (idx.kind.astype(np.int64) << 32) | (
            idx.section.astype(np.int64))

    def bytes_per_image(self) -> int:
        """Peak bytes one image costs while its batch is read and resampled: the largest
        source image as float32 plus its Fourier resampling (complex, a few copies) and the
        output. Size batches by bytes with it (:func:`batch_size_for`)."""
        box = int(self.preprocess.box)  # type: ignore[arg-type]
        src = max((max(h, w) ** 2 for h, w in self.source_shapes), default=box * box)
        return 4 * (4 * src + 2 * box * box)

    def name(self, i: int) -> str:
        """Name of image ``i`` (see :meth:`ImageIndex.name`)."""
        return self.index.name(i)

    def subset(self, indices: np.ndarray | Sequence[int]) -> MrcDataset:
        """A dataset of the rows ``indices`` with the same classes and preprocessing."""
        idx = np.asarray(indices, dtype=np.int64)
        return MrcDataset(self.index.subset(idx), self.labels[idx], self.class_names,
                          self.preprocess, self.views, self.source_shapes)

    @property
    def apix_summary(self) -> dict[str, Any]:
        """Pixel sizes: ``{"input": sorted distinct known Å values, "unknown": #images
        without a pixel size, "output": cfg.apix, "box": cfg.box}``."""
        apix = self.index.apix
        known = np.unique(np.round(apix[apix > 0], 5)).tolist()
        return {
            "input": known,
            "unknown": int((apix <= 0).sum()),
            "output": self.preprocess.apix,
            "box": self.preprocess.box,
        }

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return dict(zip(self.class_names, counts.tolist(), strict=True))


def stratified_split(
    labels: np.ndarray | Sequence[int], val_fraction: float, seed: int,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train/validation keeping class proportions.

    Each class contributes ``round(n_c * val_fraction)`` images to validation, at least 1
    and at most ``n_c - 1`` when it has two or more (a single-image class stays in train).
    Rows sharing a ``groups`` value (e.g. the same image listed twice) all follow the
    first of them, so no copy of a training image is validated on.

    Returns
    -------
    train_idx, val_idx : np.ndarray
        Sorted int64 index arrays, disjoint, together ``arange(len(labels))``.
    """
    if not 0 <= val_fraction < 1:
        raise OptionError("val_fraction", val_fraction, "must be in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    if val_fraction > 0:
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            if len(members) < 2:
                continue
            k = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
            val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    if groups is not None and len(groups):
        _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
        train_mask = train_mask[first][inverse]
        val_idx = np.flatnonzero(~train_mask)
    return np.flatnonzero(train_mask).astype(np.int64), val_idx.astype(np.int64)


def _mrc_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in MRC_SUFFIXES and not p.name.startswith(".")
    )


def _warn_unknown_apix(index: ImageIndex) -> None:
    unknown = sorted({index.files[f] for f in index.file_id[index.apix <= 0].tolist()})
    if unknown:
        warnings.warn(
            f"{len(unknown)} file(s) have no pixel size (e.g. {unknown[0]}); "
            "their images are resampled to the box",
            stacklevel=2,
        )


def _placeholder_apix(index: ImageIndex, expected: float) -> None:
    """Warn, once per file, where a header's 0 or exactly 1 Å (what many tools write when
    they know no pixel size) differs from the pixel size the model expects."""
    for f in np.unique(index.file_id).tolist():
        a = float(index.apix[np.argmax(index.file_id == f)])
        if a in (0.0, 1.0) and expected and abs(a - expected) > 0.01 * expected:
            used = f"{a:g} Å/px" if a else "none (resized to the box)"
            warnings.warn(
                f"{index.files[f]}: header pixel size {a:g} Å looks like a placeholder; the "
                f"model expects {expected:g} Å/px; using {used} (set it with --apix)",
                stacklevel=3,
            )


def _finish(
    index: ImageIndex,
    labels: np.ndarray,
    class_names: Sequence[str],
    preprocess: PreprocessConfig,
    views: ViewSpec,
    shapes: dict[int, tuple[int, int]],
    apix: float | None = None,
) -> MrcDataset:
    """Apply a pixel size override, resolve the preprocessing from per-file image shapes
    and build the dataset."""
    if apix is not None:
        if not (np.isfinite(apix) and apix > 0):
            raise OptionError("input_apix", apix, "must be > 0")
        index = dataclasses.replace(index, apix=np.full(len(index), float(apix)))
    elif preprocess.is_resolved:
        _placeholder_apix(index, float(preprocess.apix or 0.0))
    _warn_unknown_apix(index)
    pairs = {(shapes[int(f)], float(a)) for f, a in zip(index.file_id, index.apix, strict=True)}
    resolved = preprocess.resolved([s for s, _ in pairs], [a for _, a in pairs])
    return MrcDataset(index, labels, class_names, resolved, views,
                      [shapes[f] for f in range(len(index.files))])


def _labels_from_names(
    names: Sequence[str], class_names: Sequence[str] | None, where: str, min_classes: int = 2
) -> tuple[np.ndarray, list[str]]:
    """Map per-image class names to indices; derive sorted classes unless given."""
    found = sorted(set(names), key=_natural_key)
    if class_names is None:
        if len(found) < min_classes:
            raise BiocnnError(
                f"{where}: training needs at least {min_classes} classes, found {len(found)}"
                + (f" ({found[0]})" if found else "")
            )
        class_names = found
    lookup = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in found if c not in lookup]
    if unknown:
        raise BiocnnError(f"{where}: class {unknown[0]!r} is not one of the model's classes")
    return np.asarray([lookup[n] for n in names], dtype=np.int64), list(class_names)


def _natural_key(name: str) -> tuple[int, float, str]:
    """Sort numbers numerically (1, 2, 10) before other names (alphabetically)."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def folder_dataset(
    root: str | os.PathLike,
    *,
    preprocess: PreprocessConfig,
    views: ViewSpec | None = None,
    class_names: Sequence[str] | None = None,
    apix: float | None = None,
) -> MrcDataset:
    """Dataset of ``root/<class>/*.mrc|*.mrcs|*.map`` (one sub-folder per class).

    Parameters
    ----------
    root
        Folder of class folders (hidden folders are skipped; loose files are ignored).
    preprocess
        Preprocessing; ``box``/``apix`` left None are resolved from the data.
    views
        How 3D files are read and which views volumes yield.
    class_names
        The model's classes (evaluation); None derives sorted folder names and needs >= 2.
    apix
        Pixel size in Å of every input image, instead of the headers'.

    Raises
    ------
    BiocnnError
        Missing root, no class folders, a class folder without MRC files, fewer than two
        classes (when deriving), any unreadable file.
    """
    views = views or ViewSpec()
    root = Path(root)
    if not root.is_dir():
        raise BiocnnError(f"data folder {root} not found")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise BiocnnError(f"{root}: no class sub-folders (want {root}/<class>/*.mrc)")
    infos: list[MrcInfo] = []
    file_class: list[str] = []
    for d in class_dirs:
        files = _mrc_files(d, recursive=False)
        if not files:
            raise BiocnnError(f"class folder {d} has no .mrc/.mrcs/.map files")
        for p in files:
            info = inspect_mrc(p, as_volume=views.as_volume)
            if info.layout == "volume":
                k = len(views.views(info))
                what = f"slices {views.slices}" + (" + projection" if views.project else "")
                warnings.warn(f"{p}: a 3D volume in class folder {d.name} gives {k} image(s) "
                              f"({what} along {views.slice_axis}); use --slices all|K or "
                              "--project for more, or --stack if it is a particle stack",
                              stacklevel=2)
            infos.append(info)
            file_class.append(d.name)
    index = ImageIndex.from_infos(infos, views)
    labels, names = _labels_from_names(
        [file_class[f] for f in index.file_id.tolist()], class_names, str(root)
    )
    shapes = {f: views.image_shape(info) for f, info in enumerate(infos)}
    return _finish(index, labels, names, preprocess, views, shapes, apix)


def files_dataset(
    paths: Sequence[str | os.PathLike],
    *,
    preprocess: PreprocessConfig,
    views: ViewSpec | None = None,
    apix: float | None = None,
) -> MrcDataset:
    """Unlabelled dataset of every view of the given MRC files (labels -1); ``apix``
    overrides the headers' pixel size."""
    views = views or ViewSpec()
    if not paths:
        raise BiocnnError("no MRC files given")
    infos = [inspect_mrc(p, as_volume=views.as_volume) for p in paths]
    index = ImageIndex.from_infos(infos, views)
    shapes = {f: views.image_shape(info) for f, info in enumerate(infos)}
    return _finish(index, np.full(len(index), -1, dtype=np.int64), [], preprocess, views, shapes,
                   apix)


def _label_strings(column: pd.Series) -> list[str]:
    """STAR label values as class names; integral floats print as ints (``2.0`` -> ``"2"``)."""
    values = column.tolist()
    return [
        str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip() for v in values
    ]


def star_dataset(
    star: str | os.PathLike,
    *,
    preprocess: PreprocessConfig,
    label_column: str | None = "rlnClassNumber",
    class_names: Sequence[str] | None = None,
    apix: float | None = None,
) -> MrcDataset:
    """Dataset of the particles of a RELION 3.0/3.1+ STAR file.

    Each row's ``rlnImageName`` (``index@stack.mrcs``, 1-based; relative to the STAR
    file's folder) is one image, always read as a stack section whatever the file's
    header says. The pixel size comes from ``apix`` if given, else the STAR file (optics
    group, or detector pixel size / magnification; a header that disagrees by more than 1 %
    is warned about), else the MRC header. Rows naming the same image twice are warned
    about; :func:`stratified_split` keeps them in one split.

    Parameters
    ----------
    star
        The STAR file.
    preprocess
        Preprocessing; ``box``/``apix`` left None are resolved from the data.
    label_column
        Column holding the class (any values; names are their strings, numbers sorted
        numerically). None = unlabelled (labels -1).
    class_names
        The model's classes (evaluation); None derives them and needs >= 2.

    Raises
    ------
    BiocnnError
        Unreadable STAR file, missing label column, no particles, missing or unreadable
        stacks, out-of-range indices.
    """
    table = read_star(star)
    if len(table) == 0:
        raise BiocnnError(f"{table.path}: no particles")
    names = _label_strings(table.column(label_column)) if label_column is not None else None
    paths, sections = table.image_refs()
    labels, classes = np.full(len(paths), -1, dtype=np.int64), []
    if names is not None:
        labels, classes = _labels_from_names(names, class_names, f"{table.path} [{label_column}]")
    dup = table.duplicate_images()
    if dup.any():
        warnings.warn(f"{table.path}: {int(dup.sum())} rows name an image that another row names "
                      "too (kept; copies stay in one train/validation split)", stacklevel=2)
    return refs_dataset(table.path, paths, sections, table.pixel_sizes(), preprocess=preprocess,
                        labels=labels, class_names=classes, apix=apix)


def refs_dataset(
    source: Path,
    paths: Sequence[Path],
    sections: np.ndarray,
    ref_apix: np.ndarray,
    *,
    preprocess: PreprocessConfig,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    apix: float | None = None,
    missing_hint: str = "",
) -> MrcDataset:
    """Dataset of image references ``(paths[i], sections[i])`` (STAR rows, cryoSPARC blobs),
    every referenced file read as a stack.

    Parameters
    ----------
    source
        The table the references come from (named in errors).
    paths, sections
        ``(N,)`` files and 0-based sections.
    ref_apix
        ``(N,)`` pixel sizes the table gives (0 = none: the header's is used).
    labels, class_names
        ``(N,)`` class indices (default: unlabelled) and their names.
    apix
        A pixel size for every image, over the table and the headers.
    missing_hint
        Appended to the error for a referenced file that does not exist.
    """
    sections = np.asarray(sections, dtype=np.int64)
    ref_apix = np.asarray(ref_apix, dtype=np.float64)
    file_of: dict[str, int] = {}
    infos: list[MrcInfo] = []
    file_id = np.empty(len(paths), dtype=np.int32)
    for i, p in enumerate(paths):
        key = os.fspath(p)
        if key not in file_of:
            if not Path(p).is_file():
                raise BiocnnError(f"{source}: image file {p} not found{missing_hint}")
            file_of[key] = len(infos)
            infos.append(inspect_mrc(p, as_volume=False))
        file_id[i] = file_of[key]
    counts = np.asarray([info.shape[0] for info in infos])[file_id]
    bad = np.flatnonzero((sections < 0) | (sections >= counts))
    if len(bad):
        j = int(bad[0])
        raise BiocnnError(f"{source}: image {sections[j] + 1}@{paths[j]} out of range "
                          f"({counts[j]} images in the file)")
    header_apix = np.asarray([info.apix for info in infos])[file_id]
    _check_star_apix(source, infos, file_id, ref_apix)
    index = ImageIndex(
        files=tuple(str(i.path) for i in infos),
        layouts=tuple(i.layout for i in infos),
        file_id=file_id,
        kind=np.full(len(paths), int(ViewKind.IMAGE), dtype=np.int8),
        section=sections.astype(np.int32),
        apix=np.where(ref_apix > 0, ref_apix, header_apix),
    )
    if labels is None:
        labels = np.full(len(index), -1, dtype=np.int64)
    shapes = {f: (info.shape[1], info.shape[2]) for f, info in enumerate(infos)}
    return _finish(index, labels, class_names, preprocess, ViewSpec(), shapes, apix)


def _check_star_apix(star: Path, infos: Sequence[MrcInfo], file_id: np.ndarray,
                     star_apix: np.ndarray) -> None:
    """Warn once per file where the table's pixel size and a real header value differ by > 1 %."""
    for f, info in enumerate(infos):
        rows = file_id == f
        if not rows.any() or info.apix in (0.0, 1.0):  # 0 / 1 Å: placeholders, not a claim
            continue
        a = float(star_apix[np.argmax(rows)])
        if a > 0 and abs(a - info.apix) > 0.01 * a:
            warnings.warn(f"{star}: pixel size {a:g} Å differs from the header of {info.path} "
                          f"({info.apix:g} Å); using {a:g} Å", stacklevel=3)


def build_dataset(
    source: str | os.PathLike,
    *,
    preprocess: PreprocessConfig,
    views: ViewSpec | None = None,
    label_column: str = "rlnClassNumber",
    labeled: bool = True,
    class_names: Sequence[str] | None = None,
    apix: float | None = None,
) -> MrcDataset:
    """Build a dataset from a folder, a STAR file or an MRC file.

    * ``*.star`` -> :func:`star_dataset` (labels from ``label_column`` when ``labeled``);
    * a folder, ``labeled`` -> :func:`folder_dataset` (one sub-folder per class);
    * a folder, not ``labeled`` -> :func:`files_dataset` of every MRC file below it
      (recursive, sorted);
    * an MRC file, not ``labeled`` -> :func:`files_dataset` of that file.

    Parameters
    ----------
    source
        Folder, STAR file or MRC file.
    preprocess, views, class_names, apix
        As in :func:`folder_dataset` / :func:`star_dataset`.
    label_column
        STAR column holding the class.
    labeled
        False for prediction: no labels are needed (all -1).
    """
    views = views or ViewSpec()
    source = Path(source)
    if source.suffix.lower() == ".star":
        return star_dataset(
            source,
            preprocess=preprocess,
            label_column=label_column if labeled else None,
            class_names=class_names,
            apix=apix,
        )
    if source.is_dir():
        if labeled:
            return folder_dataset(
                source,
                preprocess=preprocess,
                views=views,
                class_names=class_names,
                    apix=apix,
            )
        files = _mrc_files(source, recursive=True)
        if not files:
            raise BiocnnError(f"{source}: no .mrc/.mrcs/.map files")
        return files_dataset(files, preprocess=preprocess, views=views, apix=apix)
    if not source.exists():
        raise BiocnnError(f"input {source} not found")
    if labeled:
        raise BiocnnError(
            f"{source}: a single file has no labels; use a folder per class or a STAR file"
        )
    return files_dataset([source], preprocess=preprocess, views=views, apix=apix)
