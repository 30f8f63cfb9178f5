"""Data path vs model: is reading ever the bottleneck of training?

For each image size a float32 stack is written to a temporary folder (page cache warm) and,
alternately in each round, timed:

* ``data``: the training data path -- :class:`biocnn.data.MrcDataset` batches in a shuffled
  order through :func:`biocnn.data.make_loader` (sorted reads out of the memory map), then
  the device-side :class:`biocnn.data.Standardize` (here on the CPU);
* ``train``: training steps (forward, backward, AdamW) of the default cryo model
  (``invariant_m``, widths 16-128) on batches of the same size.

The ratio ``data / train`` (images/s, paired round by round) must stay >= 20: the data path
is then never what a user waits for. Both run on the same torch thread count.

Usage
-----
    python bench/data_throughput.py                      # 64, 128, 256 px; 1 and 2 threads
    python bench/data_throughput.py --quick              # smoke run
    python bench/data_throughput.py --sizes 128 --threads 2

Writes ``bench/results/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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

from biocnn.data import PreprocessConfig, build_dataset, make_loader
from biocnn.models import create_model
from biocnn.runtime import reuse_freed_memory

__all__ = ["main"]

TARGET = 20.0


def _rate(one_pass: Callable[[], int], min_seconds: float) -> float:
    """Images/s of ``one_pass`` (returns images done), repeated for ``min_seconds``."""
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or images == 0:
        images += one_pass()
    return images / (time.perf_counter() - t0)


def _case(tmp: Path, size: int, batch: int, n: int, rounds: int, min_seconds: float
          ) -> dict[str, list[float]]:
    path = make_stack(tmp / f"stack{size}.mrcs", n, size)
    warm_page_cache(path)
    data = build_dataset(path, preprocess=PreprocessConfig(box=size, apix=1.0), labeled=False)
    loader = make_loader(data, batch, shuffle=True, seed=0)
    standardize = data.preprocess.standardizer()
    model = create_model("invariant_m", num_classes=4, widths=[16, 32, 64, 128])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 4, (batch,))

    def read() -> int:
        return sum(len(standardize(images)) for images, _ in loader)

    def step() -> int:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch

    read(), step()  # warm-up
    return interleaved({"data": lambda: _rate(read, min_seconds),
                        "train": lambda: _rate(step, min_seconds)}, rounds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,128,256", help="image sizes in px")
    p.add_argument("--threads", default="1,2", help="torch thread counts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 round")
    args = p.parse_args(argv)
    reuse_freed_memory()  # as fit does: the step is timed as training runs it
    sizes = [64] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds, min_seconds = (1, 0.2) if args.quick else (args.rounds, 1.0)
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="biocnn-bench-") as tmp:
        for threads in [int(t) for t in args.threads.split(",")]:
            set_threads(threads)
            for size in sizes:
                n = max(4 * args.batch_size, min(4000, (256 << 20) // (4 * size * size)))
                series = _case(Path(tmp), size, args.batch_size, n, rounds, min_seconds)
                ratio = spread(paired_ratios(series["data"], series["train"]))
                key = f"{size}px/{threads}t"
                results[key] = {"data_images_per_s": spread(series["data"]),
                                "train_images_per_s": spread(series["train"]),
                                "data_over_train": ratio, "met": ratio["min"] >= TARGET}
                rows.append((key, f"{results[key]['data_images_per_s']['median']:,.0f}",
                             f"{results[key]['train_images_per_s']['median']:,.0f}",
                             f"{ratio['median']:,.0f}x", "yes" if ratio["min"] >= TARGET else "NO"))
                console.print(f"{key}: data {rows[-1][1]} img/s, train {rows[-1][2]} img/s")
    print_table(f"data path (read + standardise) vs invariant_m training step, batch "
                f"{args.batch_size}, median of {rounds} rounds",
                ["case", "data img/s", "train img/s", "data / train", f">= {TARGET:g}x"], rows)
    payload = {"batch_size": args.batch_size, "rounds": rounds, "target": TARGET,
               "results": results}
    save_results("data_throughput", payload)
    return payload


if __name__ == "__main__":
    main()
