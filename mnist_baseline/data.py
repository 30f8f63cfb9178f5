"""Load MNIST (or any IDX data set in the MNIST layout): bundled package data or a user directory.

Example
-------
>>> from mnist_baseline.data import load_mnist
>>> mnist = load_mnist()                     # bundled copy, SHA256-checked
>>> mnist.train_images.shape, mnist.test_labels.shape
((60000, 28, 28), (10000,))
>>> own = load_mnist(Path("my_idx_dir"))     # doctest: +SKIP
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biocnn.errors import BiocnnError
from mnist_baseline.idx import read_idx, verify_sha256

__all__ = [
    "MNIST_FILES",
    "SUMS_FILE",
    "MnistData",
    "bundled_data_dir",
    "find_mnist_files",
    "load_mnist",
]

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""Role -> base file name. On disk each may be ``<name>.gz`` (preferred if both exist) or raw."""

SUMS_FILE = "SHA256SUMS"
"""Checksum file name: always checked for the bundled data; for a user directory when present."""


@dataclass(frozen=True)
class MnistData:
    """An IDX image-classification data set in the MNIST layout.

    Attributes
    ----------
    train_images, test_images
        uint8 arrays (N, H, W); train and test share the frame size (28, 28 for MNIST).
    train_labels, test_labels
        uint8 arrays (N,), one per image.
    source
        Directory the files were read from.
    bundled
        True when ``source`` is the copy shipped inside the package.
    verified
        True when the files were checked against a ``SHA256SUMS`` file.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: Path
    bundled: bool
    verified: bool

    @property
    def frame(self) -> tuple[int, int]:
        """Image frame size (H, W)."""
        return self.train_images.shape[1], self.train_images.shape[2]

    @property
    def num_classes(self) -> int:
        """Largest label in either split plus one (10 for MNIST)."""
        return int(max(self.train_labels.max(initial=0), self.test_labels.max(initial=0))) + 1


def bundled_data_dir() -> Path:
    """Directory of the MNIST copy shipped as package data (``mnist_baseline/data``, on disk)."""
    return Path(str(importlib.resources.files("mnist_baseline").joinpath("data")))


def find_mnist_files(data_dir: Path) -> dict[str, Path]:
    """Locate the four IDX files in ``data_dir``, preferring ``<name>.gz`` over raw ``<name>``.

    Returns
    -------
    dict[str, pathlib.Path]
        Role (a key of :data:`MNIST_FILES`) -> existing file.

    Raises
    ------
    BiocnnError
        ``data_dir`` is not a directory, or one of the files is absent in both forms.
    """
    if not data_dir.is_dir():
        raise BiocnnError(f"MNIST data directory {data_dir} does not exist or is not a directory")
    found: dict[str, Path] = {}
    for role, name in MNIST_FILES.items():
        candidates = (data_dir / f"{name}.gz", data_dir / name)
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise BiocnnError(f"MNIST file {name}.gz (or raw {name}) not found in {data_dir}")
        found[role] = existing[0]
    return found


def load_mnist(data_dir: Path | None = None, verify: bool = True) -> MnistData:
    """Load the train and test splits of MNIST or of an IDX data set with the same file layout.

    Parameters
    ----------
    data_dir
        Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzip-compressed with a
        ``.gz`` suffix or raw (``.gz`` wins when both exist). ``None`` loads the bundled copy.
    verify
        Check SHA256 sums before parsing: for the bundled copy always (its ``SHA256SUMS`` must
        exist), for ``data_dir`` only when it contains a ``SHA256SUMS`` file, which must then
        list every file that is loaded. ``False`` skips the check.

    Returns
    -------
    MnistData
        uint8 images (N, H, W) and labels (N,) for both splits.

    Raises
    ------
    BiocnnError
        Missing directory or file, checksum mismatch, malformed IDX file, image/label count
        mismatch, or train and test frames of different sizes (each message names the file).
    """
    bundled = data_dir is None
    source = bundled_data_dir() if data_dir is None else Path(data_dir)
    files = find_mnist_files(source)
    sums = source / SUMS_FILE
    verified = False
    if verify:
        if bundled and not sums.is_file():
            raise BiocnnError(f"bundled checksum file {sums} is missing; reinstall the package")
        if sums.is_file():
            verify_sha256(files.values(), sums)
            verified = True
    arrays = {
        role: read_idx(path, ndim=3 if role.endswith("images") else 1)
        for role, path in files.items()
    }
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise BiocnnError(
                f"{files[f'{split}_images']} holds {n_images} images but "
                f"{files[f'{split}_labels']} holds {n_labels} labels"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise BiocnnError(
            f"{files['test_images']} has {arrays['test_images'].shape[1:]} frames but "
            f"{files['train_images']} has {arrays['train_images'].shape[1:]}"
        )
    return MnistData(**arrays, source=source, bundled=bundled, verified=verified)
