"""DDP scaling on the CPU: P processes x T threads training with the same global batch.

Each configuration ``PxT`` starts P processes (``torch.multiprocessing`` spawn with the
``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` variables that
``torchrun`` would set; gloo) with T torch threads each. Every process runs
:func:`biocnn.engine.fit` on the same in-memory data with batch ``global / P``, so all
configurations do identical work per step. A single process (``1xT``) also runs in a
spawned child, so start-up is alike. Throughput is the images/s of the last epoch
(the first one includes warm-up), reported by rank 0; configurations alternate between
rounds. Speed-ups are relative to the first configuration (``1x1`` by default).

Usage
-----
    python bench/ddp_scaling.py                         # 1x1, 1x2, 2x1 on invariant @ 64 px
    python bench/ddp_scaling.py --quick                 # smoke run, ~30 s
    python bench/ddp_scaling.py --configs 1x2,2x1,2x2 --model lenet_fc --size 28 --global-batch 256

Writes ``bench/results/ddp_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import console, interleaved, paired_ratios, print_table, save_results, spread

from biocnn.config import TrainConfig
from biocnn.data import TensorData
from biocnn.engine import fit
from biocnn.models.registry import create_model

__all__ = ["free_port", "run_config", "main"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, threads: int, port: int, spec: dict[str, Any], out: str) -> None:
    """One rank: set the torchrun variables, train, and (rank 0) write the history as JSON."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)  # torch read OMP_NUM_THREADS at import; fit keeps this count
    torch.manual_seed(0)
    kwargs = {"img_size": spec["size"]} if spec["model"] == "lenet_fc" else {}
    model = create_model(spec["model"], num_classes=10, **kwargs)
    n = spec["steps"] * spec["global_batch"]
    gen = torch.Generator().manual_seed(1)
    data = TensorData(torch.randn(n, 1, spec["size"], spec["size"], generator=gen),
                      torch.randint(0, 10, (n,), generator=gen))
    cfg = TrainConfig(epochs=spec["epochs"], batch_size=spec["global_batch"] // world,
                      device="cpu", progress=False, bn_recalibrate=0)  # the step loop only
    try:
        result = fit(model, data, None, cfg)
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result.history))


def run_config(procs: int, threads: int, spec: dict[str, Any]) -> dict[str, float]:
    """Train once with ``procs`` processes of ``threads`` threads; images/s of the last epoch."""
    with tempfile.TemporaryDirectory(prefix="biocnn-ddp-") as tmp:
        out = str(Path(tmp) / "history.json")
        t0 = time.perf_counter()
        mp.start_processes(_worker, args=(procs, threads, free_port(), spec, out), nprocs=procs,
                           start_method="spawn")
        wall = time.perf_counter() - t0
        history = json.loads(Path(out).read_text())
    return {"images_per_s": history[-1]["images_per_s"], "wall_seconds": wall}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=None,
                   help="PxT = processes x threads each, comma-separated "
                        "(default 1x1,1x2,2x1; --quick 1x1,2x1)")
    p.add_argument("--model", default="invariant", help="registered model (default invariant)")
    p.add_argument("--size", type=int, default=None, help="image size (default 64; --quick 32)")
    p.add_argument("--global-batch", type=int, default=64, help="images per step, all ranks (64)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default 8; --quick 3)")
    p.add_argument("--epochs", type=int, default=2, help="epochs; the last one is timed (2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2; --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small images, two configurations, one round")
    args = p.parse_args(argv)
    args.size = args.size or (32 if args.quick else 64)
    args.steps = args.steps or (3 if args.quick else 8)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.configs = args.configs or ("1x1,2x1" if args.quick else "1x1,1x2,2x1")
    try:
        args.configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    except ValueError:
        p.error(f"--configs {args.configs!r}: use PxT pairs such as 1x2,2x1")
    if any(len(c) != 2 or min(c) < 1 or args.global_batch % c[0] for c in args.configs):
        p.error("--configs: each PxT needs P, T >= 1 and P dividing --global-batch")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    args = _parse(argv)
    spec = {"model": args.model, "size": args.size, "global_batch": args.global_batch,
            "steps": args.steps, "epochs": args.epochs}
    console.print(f"{args.model} @ {args.size} px, global batch {args.global_batch}, "
                  f"{args.steps} steps/epoch, {os.cpu_count()} CPUs")
    names = [f"{p}x{t}" for p, t in args.configs]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}

    def variant(procs: int, threads: int, name: str) -> float:
        runs[name].append(run_config(procs, threads, spec))
        return runs[name][-1]["images_per_s"]

    series = interleaved(
        {name: (lambda p=p, t=t, name=name: variant(p, t, name))
         for name, (p, t) in zip(names, args.configs, strict=True)},
        args.rounds,
    )
    base = names[0]
    results = {
        name: {
            "processes": p, "threads": t,
            "images_per_s": spread(series[name]),
            "speedup": spread(paired_ratios(series[name], series[base])),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs[name]),
        }
        for name, (p, t) in zip(names, args.configs, strict=True)
    }
    rows = [
        (name, v["processes"], v["threads"], f"{v['images_per_s']['median']:,.1f}",
         f"{v['speedup']['median']:.2f}", f"{v['wall_seconds']:.1f}")
        for name, v in results.items()
    ]
    print_table(f"DDP on the CPU (gloo), same global batch; speed-up vs {base} "
                f"(median of {args.rounds} alternating rounds)",
                ["config", "processes", "threads", "images/s", f"x {base}", "wall s"], rows)
    payload = {**spec, "rounds": args.rounds, "cpu_count": os.cpu_count(), "results": results}
    save_results("ddp_scaling", payload)
    return payload


if __name__ == "__main__":
    main()
