"""Helpers shared by the benchmark scripts in ``bench/``.

* :func:`interleaved` runs the compared variants alternately (``A B``, then ``B A``, ...)
  so that load from other processes on a shared machine hits every variant alike; ratios
  are taken between measurements made next to each other in time (:func:`paired_ratios`).
* :func:`matmul_peak_gflops` and :func:`conv_peak_gflops` measure the machine's practical
  peak (a large ``torch.mm``; a large 3x3 convolution).
* :func:`make_stack` writes a large float32 MRC stack without holding it in memory.
* :func:`save_results` writes ``bench/results/<name>.json`` atomically, with machine info;
  :func:`print_table` prints a small rich table.

Example
-------
    >>> times = interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, rounds=2)
    >>> paired_ratios(times["a"], times["b"])
    [0.5, 0.5]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from biocnn.atomic import write_json

__all__ = [
    "RESULTS_DIR",
    "console",
    "set_threads",
    "clock",
    "synchronize",
    "make_stack",
    "warm_page_cache",
    "matmul_peak_gflops",
    "conv_peak_gflops",
    "interleaved",
    "paired_ratios",
    "spread",
    "machine_info",
    "save_results",
    "print_table",
]

#: Where every benchmark writes its JSON (gitignored).
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# wide enough for the result tables when the output is a file or a pipe
console = Console(width=None if sys.stdout.isatty() else 200)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None``/0 keeps torch's default); return it."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def clock(kind: str) -> Callable[[], float]:
    """The timer of a benchmark: ``"wall"`` (``time.perf_counter``) or ``"cpu"``
    (``time.process_time``: CPU seconds of this process, all its threads).

    With one thread, CPU time ignores the time the process waits while other programs
    run, which makes single-thread comparisons stable on a shared machine; with several
    threads it also counts spin-waiting at OpenMP barriers, so prefer ``wall`` there.
    """
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        return time.process_time
    raise ValueError(f"unknown clock {kind!r}: use wall or cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU) so wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_stack(path: Path, n: int, size: int, block: int = 256, seed: int = 0) -> Path:
    """Write an ``(n, size, size)`` float32 MRC stack (1 Å pixels) ``block`` images at a time.

    The file is created with ``mrcfile.new_mmap`` and filled by repeating one random block
    of ``(block, size, size)`` Gaussian noise, so writing gigabytes takes seconds and the
    stack is never held in memory.
    """
    noise = np.random.default_rng(seed).standard_normal((block, size, size), dtype=np.float32)
    with mrcfile.new_mmap(path, shape=(n, size, size), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 1.0
        for start in range(0, n, block):
            stop = min(n, start + block)
            mrc.data[start:stop] = noise[: stop - start]
    return path


def warm_page_cache(path: Path) -> None:
    """Read ``path`` once so later reads come from the page cache."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def _best_gflops(
    fn: Callable[[], Any], flops: float, device: torch.device, repeats: int,
    timer: Callable[[], float],
) -> float:
    """Best-of-``repeats`` GFLOP/s of ``fn`` (one untimed call first warms the kernels)."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = timer()
        fn()
        synchronize(device)
        best = min(best, timer() - t0)
    return flops / best / 1e9


def matmul_peak_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``(n, n) @ (n, n)`` ``torch.mm`` (the BLAS peak).

    The matrix is large enough for the BLAS to reach its top speed on CPUs and GPUs alike.
    ``timer`` is a :func:`clock`.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.mm(a, b)
    return _best_gflops(lambda: torch.mm(a, b, out=out), 2.0 * n**3, device, repeats, timer)


def conv_peak_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, batch: int = 32,
    channels: int = 128, size: int = 32, repeats: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Best-of-``repeats`` GFLOP/s of a dense 3x3 convolution, ``(batch, channels, size,
    size)`` in and out (the convolution library's peak: oneDNN on CPUs, cuDNN on GPUs).

    A second reference next to :func:`matmul_peak_gflops`: where the BLAS behind
    ``torch.mm`` does not use the widest vector units (MKL on AMD Zen 5 runs 256-bit code,
    oneDNN 512-bit), a model's convolutions can beat the mm "peak".
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device, dtype)
    w = torch.randn(channels, channels, 3, 3, generator=gen).to(device, dtype)
    flops = 2.0 * batch * channels * channels * 9 * size * size
    with torch.no_grad():
        return _best_gflops(lambda: torch.nn.functional.conv2d(x, w, padding=1), flops, device,
                            repeats, timer)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every variant once per round, reversing the order on odd rounds.

    Parameters
    ----------
    variants
        Name → callable returning one measurement (seconds, images/s, ...).
    rounds
        Number of rounds; an even number balances the orders exactly.

    Returns
    -------
    dict
        Name → ``rounds`` measurements, in round order.
    """
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(float(variants[name]()))
    return out


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerator[i] / denominator[i]`` of two interleaved series."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of a series of measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _cpu_model() -> str:
    """``model name`` of /proc/cpuinfo with its family and model numbers (a VM often shows
    only "AMD EPYC": the family tells Zen 4 (25) from Zen 5 (26)) and widest AVX-512."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if key.strip() == "flags":
                    break
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')}"
        name += ", AVX-512)" if "avx512f" in fields.get("flags", "").split() else ")"
    return name


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, core count, load, torch version and threads, GPU."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``: command line, time, machine info and ``payload``."""
    record = {
        "benchmark": name,
        "command": " ".join(["python", *sys.argv]),
        "time": datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        **payload,
    }
    path = write_json(RESULTS_DIR / f"{name}.json", record)
    console.print(f"wrote {path}")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table; the first column is left-aligned, the others right-aligned."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
