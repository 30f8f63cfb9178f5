"""Data throughput: biocnn's memory-mapped MRC reading vs the raw read speed of the same file.

A float32 stack (``--n`` images of ``--size`` px, 2000 x 128 x 128 = 128 MB by default) is
written to a temporary folder and read once so the page cache is warm; then, alternately
in each round:

* ``raw image``: numpy over the memory map, copying image by image (``np.array(data[i])``);
* ``raw chunk``: the same in blocks of 256 images;
* ``iter_images``: :func:`biocnn.io.mrc.iter_images` (256-image blocks, NaN check) plus
  :func:`biocnn.data.preprocess_images` per block: the streaming prediction path;
* ``dataset read``: :class:`biocnn.data.MrcDataset` with every preprocessing step off
  (copy and NaN check only), through :func:`biocnn.loader.make_loader`;
* ``dataset wN``: the dataset with its preprocessing (background normalisation) in a
  random order, through :func:`biocnn.loader.make_loader` with N workers, batch 64, as
  :func:`biocnn.engine.fit` builds it.

Ratios are images/s over the ``raw image`` read of the same round.

Usage
-----
    python bench/data_throughput.py                # 2000 x 128 x 128, workers 0, 1, 2
    python bench/data_throughput.py --quick        # smoke run, ~30 s
    python bench/data_throughput.py --n 8000 --size 256 --workers 0,2

Writes ``bench/results/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import torch
from _common import (
    console,
    interleaved,
    make_stack,
    paired_ratios,
    print_table,
    save_results,
    set_threads,
    spread,
    warm_page_cache,
)
from biocnn.loader import make_loader

from biocnn.data import PreprocessConfig, build_dataset, iter_images, preprocess_images

__all__ = ["seconds_per_pass", "main"]

_CHUNK = 256  # images per block of the chunked readers


def seconds_per_pass(one_pass: Callable[[], int], expected: int, min_seconds: float) -> float:
    """Mean seconds of ``one_pass`` (which returns the images it read, checked against
    ``expected``), repeated until at least ``min_seconds`` have elapsed."""
    passes, t0 = 0, time.perf_counter()
    while True:
        got = one_pass()
        if got != expected:
            raise RuntimeError(f"a pass read {got} images, expected {expected}")
        passes += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / passes


def _count(batches: Iterable[Any]) -> int:
    """Images in an iterable of ``(images (b, ...), ...)`` batches."""
    return sum(len(b[0]) for b in batches)


def _raw_images(data: np.ndarray) -> int:
    """Copy ``data (N, H, W)`` out of its memory map image by image; returns N."""
    for i in range(len(data)):
        np.array(data[i])
    return len(data)


def _raw_chunks(data: np.ndarray) -> int:
    """Copy ``data (N, H, W)`` out of its memory map :data:`_CHUNK` images at a time."""
    for start in range(0, len(data), _CHUNK):
        np.array(data[start : start + _CHUNK])
    return len(data)


def _stream(path: Path, cfg: PreprocessConfig) -> int:
    """The prediction path: :func:`iter_images` blocks, preprocessed block by block."""
    return sum(len(preprocess_images(block, cfg, 1.0)) for _, block in iter_images(path, chunk=_CHUNK))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="images in the stack (default 2000)")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    p.add_argument("--batch-size", type=int, default=64, help="DataLoader batch size (default 64)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 4)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="repeat each measurement at least this long (default 0.3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke run: 500 images, 2 rounds")
    args = p.parse_args(argv)
    args.n = args.n or (500 if args.quick else 2000)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (
        0.05 if args.quick else 0.3)
    args.workers = [int(w) for w in args.workers.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    args = _parse(argv)
    threads = set_threads(args.threads)
    n, size = args.n, args.size
    mbytes = n * size * size * 4 / 1e6
    with tempfile.TemporaryDirectory(prefix="biocnn-bench-") as tmp:
        path = make_stack(Path(tmp) / "stack.mrcs", n, size)
        warm_page_cache(path)
        console.print(f"{path.name}: {n} x {size} x {size} float32 = {mbytes:.0f} MB, "
                      f"page cache warm, {threads} torch threads")
        handle = mrcfile.mmap(path, mode="r")
        data = handle.data
        cfg = PreprocessConfig(box=size, apix=1.0)
        full = build_dataset(path, preprocess=cfg, labeled=False)
        read_only = build_dataset(path, preprocess=PreprocessConfig(box=size, apix=1.0,
                                                                    normalize=False), labeled=False)
        shuffled = torch.Generator().manual_seed(0)
        loaders = {
            "dataset read": make_loader(read_only, args.batch_size, shuffle=True,
                                        generator=shuffled),
            **{
                f"dataset w{w}": make_loader(full, args.batch_size, shuffle=True,
                                             generator=shuffled, num_workers=w)
                for w in args.workers
            },
        }
        passes: dict[str, Callable[[], int]] = {
            "raw image": lambda: _raw_images(data),
            "raw chunk": lambda: _raw_chunks(data),
            "iter_images": lambda: _stream(path, cfg),
            **{name: (lambda loader=loader: _count(loader)) for name, loader in loaders.items()},
        }
        for one_pass in passes.values():  # warm-up: worker start, kernel caches
            one_pass()
        series = interleaved(
            {name: (lambda f=f: seconds_per_pass(f, n, args.min_seconds)) for name, f in passes.items()},
            args.rounds,
        )
        handle.close()
        del loaders
    rates = {name: [n / s for s in secs] for name, secs in series.items()}
    results = {
        name: {
            "images_per_s": spread(r),
            "mb_per_s": spread([x * size * size * 4 / 1e6 for x in r]),
            "ratio_to_raw_image": spread(paired_ratios(r, rates["raw image"])),
            "ratio_to_raw_chunk": spread(paired_ratios(r, rates["raw chunk"])),
        }
        for name, r in rates.items()
    }
    rows = [
        (name, f"{v['images_per_s']['median']:,.0f}", f"{v['mb_per_s']['median']:,.0f}",
         f"{v['ratio_to_raw_image']['median']:.3f}", f"{v['ratio_to_raw_chunk']['median']:.3f}")
        for name, v in results.items()
    ]
    print_table(f"reading a {mbytes:.0f} MB float32 stack from the page cache (median of "
                f"{args.rounds} alternating rounds)",
                ["reader", "images/s", "MB/s", "x raw image", "x raw chunk"], rows)
    payload = {
        "n": n, "size": size, "megabytes": mbytes, "batch_size": args.batch_size,
        "threads": threads, "rounds": args.rounds, "series_seconds": series, "results": results,
    }
    save_results("data_throughput", payload)
    return payload


if __name__ == "__main__":
    main()
