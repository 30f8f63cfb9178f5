"""IDX reader/writer, SHA256 checks and MNIST loading (tiny fixtures plus the bundled copy)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from biocnn.errors import BiocnnError
from mnist_baseline.data import MNIST_FILES, SUMS_FILE, bundled_data_dir, load_mnist
from mnist_baseline.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    read_idx,
    read_sha256sums,
    sha256_file,
    verify_sha256,
    write_idx,
)


def _raises_one_line(match: str, path: Path | str, func, *args, **kwargs) -> str:
    """Call ``func`` expecting a one-line BiocnnError that names ``path`` and matches ``match``."""
    with pytest.raises(BiocnnError, match=match) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def _header(magic: int, *shape: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in shape)


def _make_split(rng: np.random.Generator, n: int, h: int = 4, w: int = 5):
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_dataset(directory: Path, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-layout data set (5 train, 3 test images of 4x5); return its arrays."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = _make_split(rng, 5)
    test_images, test_labels = _make_split(rng, 3)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for role, array in arrays.items():
        write_idx(directory / (MNIST_FILES[role] + (".gz" if gz else "")), array)
    return arrays


def _write_sums(directory: Path) -> Path:
    lines = [f"{sha256_file(p)}  {p.name}" for p in sorted(directory.glob("*-ubyte*"))]
    sums = directory / SUMS_FILE
    sums.write_text("\n".join(lines) + "\n")
    return sums


# --- IDX format ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3)])
def test_roundtrip(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / f"x-idx{suffix}", array)
    back = read_idx(path, ndim=len(shape))
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    is_gzip = path.read_bytes()[:2] == b"\x1f\x8b"
    assert is_gzip == (suffix == ".gz")
    # Deterministic bytes: rewriting the same array gives the same file (and checksum).
    digest = sha256_file(path)
    write_idx(path, array)
    assert sha256_file(path) == digest


def test_header_layout(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4], np.uint8)
    images = np.zeros((2, 3, 4), np.uint8)
    expected = _header(LABELS_MAGIC, 3) + labels.tobytes()
    assert write_idx(tmp_path / "l", labels).read_bytes() == expected
    assert write_idx(tmp_path / "i", images).read_bytes()[:16] == _header(IMAGES_MAGIC, 2, 3, 4)
    assert LABELS_MAGIC == 0x00000801 and IMAGES_MAGIC == 0x00000803


def test_gz_detected_from_content_not_name(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8)
    raw_named_gz = tmp_path / "a.gz"
    raw_named_gz.write_bytes(_header(LABELS_MAGIC, 6) + array.tobytes())
    gz_named_raw = tmp_path / "b"
    gz_named_raw.write_bytes(gzip.compress(_header(LABELS_MAGIC, 6) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(raw_named_gz, ndim=1), array)
    np.testing.assert_array_equal(read_idx(gz_named_raw, ndim=1), array)


def test_missing_file(tmp_path: Path) -> None:
    _raises_one_line("not found", tmp_path / "nope.gz", read_idx, tmp_path / "nope.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic_dtype_and_dimensions(tmp_path: Path, gz: bool) -> None:
    def put(name: str, content: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if gz else content)
        return path

    bad = put("bad", b"\x12\x34\x08\x01" + (1).to_bytes(4, "big") + b"\x00")
    _raises_one_line("not an IDX file: bad magic number 0x12340801", bad, read_idx, bad)
    floats = put("floats", _header(0x00000D01, 1) + b"\0\0\0\0")
    _raises_one_line("data type 0x0d", floats, read_idx, floats)
    labels = put("labels", _header(LABELS_MAGIC, 2) + b"\1\2")
    _raises_one_line("magic number 0x00000801.*expected 0x00000803", labels, read_idx, labels, 3)
    zero_dims = put("zero", b"\0\0\x08\0")
    _raises_one_line("0 dimensions", zero_dims, read_idx, zero_dims)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_and_trailing(tmp_path: Path, gz: bool) -> None:
    full = _header(IMAGES_MAGIC, 2, 3, 3) + bytes(range(18))
    cases = {
        "short-data": (full[:-1], "truncated: header \\(2, 3, 3\\) needs 18 data bytes, found 17"),
        "short-header": (full[:10], "truncated inside its dimension header"),
        "short-magic": (full[:3], "no complete 4-byte magic number"),
        "trailing": (full + b"\0", "trailing bytes after the 18 data bytes"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if gz else content)
        _raises_one_line(match, path, read_idx, path, 3)


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    array = np.random.default_rng(2).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    path = write_idx(tmp_path / "x.gz", array)
    path.write_bytes(path.read_bytes()[:-30])  # cut the compressed stream short
    _raises_one_line("corrupt gzip stream", path, read_idx, path, 3)


def test_write_rejects_non_uint8_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.gz"
    _raises_one_line("not uint8", target, write_idx, target, np.zeros(3, np.float32))
    _raises_one_line("unsupported shape", target, write_idx, target, np.uint8(3))
    assert list(tmp_path.iterdir()) == []


# --- SHA256 ----------------------------------------------------------------------------------


def test_sha256_helpers(tmp_path: Path) -> None:
    a = tmp_path / "a.gz"
    a.write_bytes(b"hello")
    b = tmp_path / "b"
    b.write_bytes(b"world")
    assert sha256_file(a) == hashlib.sha256(b"hello").hexdigest()
    sums = tmp_path / "SUMS"
    sums.write_text(f"{sha256_file(a).upper()}  a.gz\n\n{sha256_file(b)} *b\n")
    assert read_sha256sums(sums) == {"a.gz": sha256_file(a), "b": sha256_file(b)}
    verify_sha256([a, b], sums)

    b.write_bytes(b"world!")
    _raises_one_line("SHA256 mismatch", b, verify_sha256, [a, b], sums)
    other = tmp_path / "c"
    other.write_bytes(b"")
    _raises_one_line("not listed in checksum file", other, verify_sha256, [other], sums)
    sums.write_text("deadbeef  a.gz\n")
    _raises_one_line("line 1 is not", sums, read_sha256sums, sums)


# --- load_mnist on tiny fixtures -------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_tiny_dataset(tmp_path: Path, gz: bool) -> None:
    arrays = _write_dataset(tmp_path, gz=gz)
    data = load_mnist(tmp_path)
    for role, array in arrays.items():
        np.testing.assert_array_equal(getattr(data, role), array)
    assert data.frame == (4, 5)
    largest = max(arrays["train_labels"].max(), arrays["test_labels"].max())
    assert data.num_classes == int(largest) + 1
    assert data.source == tmp_path and not data.bundled and not data.verified


def test_gz_preferred_over_raw(tmp_path: Path) -> None:
    gz_arrays = _write_dataset(tmp_path, gz=True, seed=0)
    _write_dataset(tmp_path, gz=False, seed=1)
    np.testing.assert_array_equal(load_mnist(tmp_path).train_images, gz_arrays["train_images"])


def test_checksums_in_user_dir(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    _write_sums(tmp_path)
    assert load_mnist(tmp_path).verified
    test_images = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(test_images, np.zeros((3, 4, 5), np.uint8))
    _raises_one_line("SHA256 mismatch", test_images, load_mnist, tmp_path)
    data = load_mnist(tmp_path, verify=False)
    assert not data.verified and not data.test_images.any()


def test_missing_dir_and_file(tmp_path: Path) -> None:
    _raises_one_line("does not exist", tmp_path / "none", load_mnist, tmp_path / "none")
    _write_dataset(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    _raises_one_line("train-labels-idx1-ubyte.gz \\(or raw", tmp_path, load_mnist, tmp_path)


def test_count_and_frame_mismatch(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(4, np.uint8))
    message = _raises_one_line("holds 3 images but", labels, load_mnist, tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in message
    write_idx(labels, np.zeros(3, np.uint8))
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(images, np.zeros((3, 5, 5), np.uint8))
    _raises_one_line("frames", images, load_mnist, tmp_path)


def test_labels_file_in_images_slot(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(images, np.zeros(5, np.uint8))
    _raises_one_line("expected 0x00000803", images, load_mnist, tmp_path)


# --- the bundled copy ------------------------------------------------------------------------


def test_bundled_mnist() -> None:
    root = bundled_data_dir()
    assert {SUMS_FILE, "README.md"} <= {p.name for p in root.iterdir()}
    data = load_mnist()
    assert data.bundled and data.verified and data.source == root
    assert data.train_images.shape == (60000, 28, 28) and data.train_labels.shape == (60000,)
    assert data.test_images.shape == (10000, 28, 28) and data.test_labels.shape == (10000,)
    assert data.train_images.dtype == np.uint8 and data.test_labels.dtype == np.uint8
    assert data.num_classes == 10
    assert np.bincount(data.test_labels, minlength=10).min() > 800
    assert data.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert data.train_images.min() == 0 and data.train_images.max() == 255
