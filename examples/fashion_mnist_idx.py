"""Build a Fashion-MNIST IDX folder from the npm package ``fashion-mnist`` (a harder 28x28 set).

The npm registry is reachable where the web is not; the package holds the 70,000
Fashion-MNIST images as JSON, 7,000 per class. Each class's last 1,000 become the test
split (10,000), the rest the training split (60,000), in the MNIST file layout, so that
``biocnn baseline mnist --data-dir DIR`` runs the same experiment on it.

Usage::

    npm pack fashion-mnist@1.1.0 && tar xzf fashion-mnist-1.1.0.tgz
    python examples/fashion_mnist_idx.py package data/fashion-mnist
    biocnn baseline mnist --data-dir data/fashion-mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from mnist_baseline.data import MNIST_FILES, SUMS_FILE
from mnist_baseline.idx import write_idx

TEST_PER_CLASS = 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("package", type=Path, help="unpacked npm package folder (holds src/clothes/)")
    ap.add_argument("out", type=Path, help="output folder for the 4 IDX files and SHA256SUMS")
    args = ap.parse_args()
    train_x, train_y, test_x, test_y = [], [], [], []
    for label in range(10):
        rows = json.loads((args.package / "src" / "clothes" / f"{label}.json").read_text())["data"]
        images = np.array([r for r in rows if len(r) == 784], np.uint8).reshape(-1, 28, 28)
        train_x.append(images[:-TEST_PER_CLASS])
        test_x.append(images[-TEST_PER_CLASS:])
        train_y.append(np.full(len(images) - TEST_PER_CLASS, label, np.uint8))
        test_y.append(np.full(TEST_PER_CLASS, label, np.uint8))
    # interleave the classes deterministically so that --limit keeps every class
    rng = np.random.default_rng(0)
    tr, te = rng.permutation(sum(map(len, train_y))), rng.permutation(sum(map(len, test_y)))
    arrays = {
        "train_images": np.concatenate(train_x)[tr], "train_labels": np.concatenate(train_y)[tr],
        "test_images": np.concatenate(test_x)[te], "test_labels": np.concatenate(test_y)[te],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    sums = []
    for role, array in arrays.items():
        path = write_idx(args.out / f"{MNIST_FILES[role]}.gz", array)
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    (args.out / SUMS_FILE).write_text("".join(sums))
    print(f"wrote {len(tr)} training and {len(te)} test images to {args.out}")


if __name__ == "__main__":
    main()
