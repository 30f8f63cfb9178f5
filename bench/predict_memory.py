"""Prediction memory: peak RSS of predicting MRC stacks larger than a memory budget.

Float32 stacks of increasing size (up to ``--stack-gb``) are written with
``mrcfile.new_mmap`` (never held in memory), and a small invariant classifier is saved as
a ``biocnn train``-style checkpoint. Each prediction runs in a child process whose memory
is sampled from ``/proc/<pid>/status`` every few milliseconds. Its peak resident set is the
``VmHWM`` the child itself reads at exit (exact). ``ru_maxrss`` from ``wait4`` is kept in
the JSON but not used: on Linux it also counts the launching process's high-water mark
(inherited through fork/exec), and this process has just written gigabytes through a
memory map. The peak is split into

* ``RssAnon``: anonymous memory (heap, tensors, batches) — what prediction allocates;
* ``RssFile``: file-backed pages mapped into the process: shared libraries and the pages
  of the memory-mapped stack touched so far. These are clean page-cache pages the kernel
  can drop at any time; they count in RSS only while they stay mapped and resident.

Two runners:

* ``cli``: ``biocnn predict STACK --model CKPT --json`` (MrcDataset + DataLoader);
* ``api``: :func:`biocnn.io.mrc.iter_images` blocks → :func:`biocnn.data.preprocess_images`
  → :func:`biocnn.engine.predict_logits`, keeping only per-class counts.

Memory is flat if the peak ``RssAnon`` does not grow with the stack size.

Usage
-----
    python bench/predict_memory.py                           # stacks 0.25 and 2 GB, budget 1 GB
    python bench/predict_memory.py --quick                   # smoke run, ~30 s
    python bench/predict_memory.py --stack-gb 4 --budget-gb 1 --batch-size 128 --runners cli,api
    python bench/predict_memory.py --size 2048 --box 256 --stack-gb 5.03   # 300 x 2048² images

Writes ``bench/results/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import console, make_stack, print_table, save_results

__all__ = ["write_checkpoint", "run_child", "main"]

_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
_REPO = Path(__file__).resolve().parent.parent


def write_checkpoint(path: Path, box: int, apix: float = 1.0) -> Path:
    """Save an untrained two-class ``invariant`` model (one 8-channel stage) for ``box``-px
    images at ``apix`` Å with the preprocessing and view records ``biocnn predict`` reads."""
    import torch

    from biocnn.checkpoint import save_checkpoint
    from biocnn.data import PreprocessConfig, ViewSpec
    from biocnn.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(8,))
    meta = {
        "class_names": ["a", "b"],
        "preprocess": PreprocessConfig(box=box, apix=apix).to_dict(),
        "views": ViewSpec().to_dict(),
    }
    return save_checkpoint(path, model, meta)


def _status(pid: int) -> dict[str, int] | None:
    """Memory fields of ``/proc/<pid>/status`` in kB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in _STATUS_FIELDS:
            out[key] = int(value.split()[0])
    return out or None


def run_child(
    cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.005,
    hwm_file: Path | None = None,
) -> dict[str, Any]:
    """Run ``cmd``, sampling its memory; returns peaks in MB (1e6 bytes), wall seconds and
    its stdout.

    ``peak_rss_mb`` is the ``VmHWM`` the child wrote to ``hwm_file`` at exit (exact; the
    sampled ``VmHWM`` peak without one); the ``peak_*_mb`` of the sampled fields may miss
    spikes shorter than ``interval``. ``wait4_maxrss_mb`` includes this process's own
    high-water mark (see the module docstring).
    """
    peaks = dict.fromkeys(_STATUS_FIELDS, 0)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=_REPO, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            sample = _status(proc.pid)
            for key, value in (sample or {}).items():
                peaks[key] = max(peaks[key], value)
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    exact = int(hwm_file.read_text()) if hwm_file is not None and hwm_file.exists() else None
    return {
        "seconds": seconds,
        "peak_rss_mb": _kb_to_mb(exact if exact is not None else peaks["VmHWM"]),
        "wait4_maxrss_mb": _kb_to_mb(usage.ru_maxrss),  # kB on Linux
        **{f"peak_{k}_mb": _kb_to_mb(v) for k, v in peaks.items()},
        "stdout": stdout,
    }


def _child_api(stack: str, checkpoint: str, batch_size: int) -> None:
    """The ``api`` runner (in the child): stream, preprocess and classify; print a JSON count."""
    from biocnn.checkpoint import load_checkpoint
    from biocnn.data import PreprocessConfig, iter_images, preprocess_images
    from biocnn.engine import predict_logits
    from biocnn.io.mrc import inspect_mrc

    model, ckpt = load_checkpoint(checkpoint, "cpu")
    cfg = PreprocessConfig.from_dict(ckpt["preprocess"])
    apix = inspect_mrc(stack).apix
    counts = np.zeros(len(ckpt["class_names"]), dtype=np.int64)
    for _, block in iter_images(stack, chunk=batch_size):
        x = preprocess_images(block, cfg, apix)[:, None]
        logits = predict_logits(model, x, batch_size=batch_size, device="cpu")
        counts += np.bincount(logits.argmax(1).numpy(), minlength=len(counts))
    print(json.dumps({"images": int(counts.sum())}))


def _child(runner: str, hwm_file: str, args: list[str]) -> None:
    """In the child: record ``VmHWM`` at exit, then run ``biocnn`` (cli) or the api runner."""
    atexit.register(lambda: Path(hwm_file).write_text(str(_status(os.getpid())["VmHWM"])))
    if runner == "cli":
        sys.argv = ["biocnn", *args]
        runpy.run_module("biocnn", run_name="__main__")
    else:
        stack, checkpoint, batch = args
        _child_api(stack, checkpoint, int(batch))


def _command(runner: str, stack: Path, checkpoint: Path, batch_size: int, hwm_file: Path
             ) -> list[str]:
    args = ["predict", str(stack), "--model", str(checkpoint), "--device", "cpu", "--batch-size",
            str(batch_size), "--no-progress", "--json"] if runner == "cli" else [
        str(stack), str(checkpoint), str(batch_size)]
    return [sys.executable, __file__, "--child", runner, str(hwm_file), *args]


def _kb_to_mb(kb: float) -> float:
    """``/proc`` and ``ru_maxrss`` kB (1024 bytes) to decimal MB."""
    return kb * 1024 / 1e6


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack-gb", type=float, default=None, help="largest stack in GB (default 2)")
    p.add_argument("--budget-gb", type=float, default=None, help="memory budget in GB (default 1)")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--box", type=int, default=None,
                   help="the model's box in px; images are Fourier-resampled to it (default: --size)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prediction batch (default 256, biocnn predict's; --quick 64)")
    p.add_argument("--runners", default="cli", help="cli, api or cli,api (default cli)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the child (default: inherited; --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 0.0125 and 0.1 GB stacks, batch 64, one thread")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    args.stack_gb = args.stack_gb or (0.1 if args.quick else 2.0)
    args.batch_size = args.batch_size or (64 if args.quick else 256)
    args.threads = args.threads or (1 if args.quick else None)
    args.budget_gb = args.budget_gb or 1.0
    args.runners = args.runners.split(",")
    bad = [r for r in args.runners if r not in ("cli", "api")]
    if bad:
        p.error(f"unknown runner {bad[0]!r}: use cli and/or api")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    args = _parse(argv)
    if args.child:
        runner, hwm_file, *rest = args.child
        _child(runner, hwm_file, rest)
        return None
    image_bytes = args.size * args.size * 4
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    sizes_gb = [args.stack_gb / 8, args.stack_gb]
    runs = []
    with tempfile.TemporaryDirectory(prefix="biocnn-bench-") as tmp:
        box = args.box or args.size  # images of 1 Å resampled to the model's box
        checkpoint = write_checkpoint(Path(tmp) / "model.pt", box, args.size / box)
        for gb in sizes_gb:
            n = int(gb * 1e9 // image_bytes)
            stack = make_stack(Path(tmp) / f"stack-{n}.mrcs", n, args.size)
            console.print(f"{stack.name}: {n} x {args.size}^2 float32 = {n * image_bytes / 1e9:.2f} GB")
            for runner in args.runners:
                hwm = Path(tmp) / f"hwm-{runner}-{n}"
                r = run_child(_command(runner, stack, checkpoint, args.batch_size, hwm), env,
                              hwm_file=hwm)
                predicted = int(json.loads(r.pop("stdout"))["images"])
                if predicted != n:
                    raise RuntimeError(f"{runner} predicted {predicted} of {n} images")
                runs.append({"runner": runner, "stack_gb": n * image_bytes / 1e9, "images": n, **r})
            stack.unlink()
    budget_mb = args.budget_gb * 1e3
    rows = [
        (r["runner"], f"{r['stack_gb']:.2f}", f"{r['images']:,}", f"{r['seconds']:.1f}",
         f"{r['peak_rss_mb']:,.0f}", f"{r['peak_RssAnon_mb']:,.0f}", f"{r['peak_RssFile_mb']:,.0f}",
         "yes" if r["peak_rss_mb"] <= budget_mb else "no",
         "yes" if r["peak_RssAnon_mb"] <= budget_mb else "no")
        for r in runs
    ]
    print_table(f"peak memory of prediction in a child process (budget {args.budget_gb:g} GB "
                f"= {budget_mb:,.0f} MB; memory in MB)",
                ["runner", "stack GB", "images", "seconds", "peak RSS", "peak RssAnon",
                 "peak RssFile", "RSS in budget", "anon in budget"], rows)
    payload = {"budget_gb": args.budget_gb, "size": args.size, "batch_size": args.batch_size,
               "child_threads": args.threads, "runs": runs}
    save_results("predict_memory", payload)
    return payload


if __name__ == "__main__":
    main()
