"""Training throughput: biocnn's loop (:func:`biocnn.engine.fit`) vs a bare PyTorch loop.

For each case (model @ image size) both loops train the same model on the same in-memory
data with the same batch size, AdamW and number of steps; the two are run alternately in
one process (``A B``, ``B A``, ...) so machine noise hits both, and the ratio of images/s
is taken round by round. The forward + backward FLOPs of one step are counted with
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products) and
the achieved GFLOP/s compared with the peak of a large ``torch.mm`` measured in the same
rounds ("of mm peak"), and with the better of that and a large dense 3x3 convolution
("of best peak": on CPUs where the BLAS runs narrower vectors than the convolution
library, e.g. MKL on AMD Zen 5, the mm peak understates the machine). ``--profile``
adds the share of step time spent in convolution/matmul kernels.

Usage
-----
    python bench/train_throughput.py                 # all cases, ~2 minutes
    python bench/train_throughput.py --quick         # smoke run, ~30 s
    python bench/train_throughput.py --cases invariant@128 --batch-size 64 --threads 2 --amp

Writes ``bench/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    clock,
    console,
    conv_peak_gflops,
    interleaved,
    matmul_peak_gflops,
    paired_ratios,
    print_table,
    save_results,
    set_threads,
    spread,
    synchronize,
)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from biocnn.config import TrainConfig
from biocnn.data import TensorData
from biocnn.engine import fit
from biocnn.models.registry import create_model
from biocnn.runtime import resolve_device

__all__ = ["Case", "CASES", "count_flops", "bare_loop", "run_case", "main"]


@dataclass(frozen=True)
class Case:
    """A model at an image size with its default batch size."""

    model: str
    size: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}@{self.size}"

    def build(self) -> nn.Module:
        """The model (seeded), mapping ``(B, 1, size, size)`` to ``(B, 10)``."""
        torch.manual_seed(0)
        kwargs = {"img_size": self.size} if self.model == "lenet_fc" else {}
        return create_model(self.model, num_classes=10, **kwargs)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("lenet_fc", 28, 128),
        Case("invariant", 28, 128),
        Case("invariant", 128, 32),
        Case("invariant_m", 128, 8),
    )
}
_QUICK_CASES = ("lenet_fc@28", "invariant@128")


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def count_flops(model: nn.Module, x: Tensor, y: Tensor, amp: bool) -> int:
    """FLOPs of one forward + backward pass of ``model`` on ``x (B, C, H, W)``, ``y (B,)``."""
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        with _autocast(x.device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
    return int(counter.get_total_flops())


def bare_loop(
    net: nn.Module, params: list[nn.Parameter], images: Tensor, labels: Tensor, cfg: TrainConfig,
    device: torch.device, fused: bool, generator: torch.Generator,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds for one shuffled pass over ``images (N, C, H, W)`` in the plainest PyTorch.

    AdamW with the loop's learning rate and weight decay (``fused`` picks the fused kernel);
    no schedule, no metrics, no logging. The optimizer is built inside the timing, as
    :func:`fit` builds its own. ``timer`` is a :func:`_common.clock`.
    """
    t0 = timer()
    net.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **({"fused": True} if fused else {}))
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        x = images[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    synchronize(device)
    return timer() - t0


def _fit_seconds(
    model: nn.Module, data: TensorData, cfg: TrainConfig, timer: Callable[[], float]
) -> float:
    t0 = timer()
    fit(model, data, None, cfg)
    return timer() - t0


def _kernel_share(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Profile two steps: share of self time in conv/matmul kernels, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        step()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    compute = ("conv", "mm", "matmul", "linear")
    in_kernels = sum(getattr(e, attr) for e in events if any(k in e.key for k in compute))
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:8]
    return {
        "conv_matmul_share": in_kernels / total if total else float("nan"),
        "top_ops": [{"op": e.key, "share": getattr(e, attr) / total} for e in top],
    }


def run_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Measure one case; returns per-round series and their summaries."""
    batch = args.batch_size or (max(4, case.batch // 8) if args.quick else case.batch)
    base = case.build()
    fit_model, bare_model = copy.deepcopy(base), copy.deepcopy(base).to(device)
    if args.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_net = torch.compile(bare_model) if args.compile else bare_model
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(  # the step loop only: no validation, no BatchNorm recalibration
        epochs=1, batch_size=batch, device=str(device), amp=args.amp, compile=args.compile,
        channels_last=args.channels_last, progress=False, bn_recalibrate=0,
    )
    fused = args.bare_optimizer == "fused"
    params = list(bare_model.parameters())
    timer = clock(args.clock)

    def bare(d: TensorData) -> float:
        return bare_loop(bare_net, params, d.images, d.labels, cfg, device, fused, gen, timer)

    def data(steps: int) -> TensorData:
        g = torch.Generator().manual_seed(1)
        return TensorData(torch.randn(steps * batch, 1, case.size, case.size, generator=g),
                          torch.randint(0, 10, (steps * batch,), generator=g))

    warm = data(2)
    flops = count_flops(base.to(device), warm.images[:batch].to(device),
                        warm.labels[:batch].to(device), args.amp)
    # warm-up (kernel selection, compilation) and calibration of the number of steps
    _fit_seconds(fit_model, warm, cfg, timer)
    bare(warm)
    per_step = bare(warm) / 2
    steps = args.steps or int(min(50, max(2, round(args.seconds / per_step))))
    train = data(steps)
    peak_dtype = torch.bfloat16 if args.amp else torch.float32
    series = interleaved({
        "peak_gflops": lambda: matmul_peak_gflops(device, peak_dtype, n=1024 if args.quick else 2048,
                                                  repeats=2, timer=timer),
        "conv_peak_gflops": lambda: conv_peak_gflops(device, peak_dtype,
                                                     batch=8 if args.quick else 32,
                                                     repeats=2, timer=timer),
        "biocnn_s": lambda: _fit_seconds(fit_model, train, cfg, timer),
        "bare_s": lambda: bare(train),
    }, args.rounds)
    images = steps * batch
    biocnn_ips = [images / s for s in series["biocnn_s"]]
    bare_ips = [images / s for s in series["bare_s"]]
    gflops = [flops * steps / s / 1e9 for s in series["biocnn_s"]]
    best_peak = [max(m, c) for m, c in
                 zip(series["peak_gflops"], series["conv_peak_gflops"], strict=True)]
    out: dict[str, Any] = {
        "case": case.name, "batch_size": batch, "steps": steps, "gflop_per_step": flops / 1e9,
        "series": series,
        "biocnn_images_per_s": spread(biocnn_ips),
        "bare_images_per_s": spread(bare_ips),
        "ratio": spread(paired_ratios(biocnn_ips, bare_ips)),
        "biocnn_gflops": spread(gflops),
        "peak_gflops": spread(series["peak_gflops"]),
        "fraction_of_peak": spread(paired_ratios(gflops, series["peak_gflops"])),
        "conv_peak_gflops": spread(series["conv_peak_gflops"]),
        "fraction_of_best_peak": spread(paired_ratios(gflops, best_peak)),
    }
    if args.profile:
        one = TensorData(train.images[:batch], train.labels[:batch])
        out["profile"] = _kernel_share(lambda: bare(one), device)
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset of {', '.join(CASES)} (default: all; "
                        f"--quick: {', '.join(_QUICK_CASES)})")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per measurement (default: as many as fill --seconds)")
    p.add_argument("--seconds", type=float, default=None,
                   help="target seconds per measurement when --steps is not given (default 1.5)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size for every case (default: per case, /8 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 6; --quick 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or CPU time of this process (stable with --threads 1 on a "
                        "shared machine)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--compile", action="store_true", help="torch.compile in both loops")
    p.add_argument("--channels-last", action="store_true", help="channels_last in both loops")
    p.add_argument("--bare-optimizer", choices=("default", "fused"), default="default",
                   help="AdamW of the bare loop: PyTorch's default or the fused kernel")
    p.add_argument("--profile", action="store_true", help="also profile one step per case")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: two small cases, short measurements, 1024² peak")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.seconds = args.seconds or (0.3 if args.quick else 1.5)
    names = args.cases.split(",") if args.cases else list(_QUICK_CASES if args.quick else CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    args.cases = names
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the results."""
    args = _parse(argv)
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu times CPU work only; use --clock wall on a GPU")
    console.print(f"device {device}, {threads} threads, {args.rounds} alternating rounds, "
                  f"{args.clock} clock"
                  + (", bf16 autocast" if args.amp else "") + (", compiled" if args.compile else ""))
    results = []
    for name in args.cases:
        results.append(run_case(CASES[name], args, device))
        r = results[-1]
        console.print(f"  {name}: {r['steps']} steps x {r['batch_size']} images per measurement")
    rows = [
        (
            r["case"], r["batch_size"], f"{r['gflop_per_step']:.2f}",
            f"{r['biocnn_images_per_s']['median']:,.1f}", f"{r['bare_images_per_s']['median']:,.1f}",
            f"{r['ratio']['median']:.3f} [{r['ratio']['min']:.2f}-{r['ratio']['max']:.2f}]",
            f"{r['biocnn_gflops']['median']:.1f}",
            f"{r['peak_gflops']['median']:.0f} | {r['conv_peak_gflops']['median']:.0f}",
            f"{100 * r['fraction_of_peak']['median']:.1f}%",
            f"{100 * r['fraction_of_best_peak']['median']:.1f}%",
            *([f"{100 * r['profile']['conv_matmul_share']:.0f}%"] if args.profile else []),
        )
        for r in results
    ]
    columns = ["case", "batch", "GFLOP/step", "biocnn img/s", "bare img/s", "ratio [min-max]",
               "biocnn GFLOP/s", "peak mm | conv", "of mm peak", "of best peak"]
    print_table("training throughput (median of alternating rounds)",
                columns + (["conv+mm time"] if args.profile else []), rows)
    payload = {
        "device": str(device), "threads": threads, "clock": args.clock, "rounds": args.rounds,
        "amp": args.amp,
        "compile": args.compile, "channels_last": args.channels_last,
        "bare_optimizer": args.bare_optimizer, "cases": results,
    }
    save_results("train_throughput", payload)
    return payload


if __name__ == "__main__":
    main()
