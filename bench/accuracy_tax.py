"""Ablation: what costs the exact ``invariant`` model accuracy on centred 28x28 digits.

Trains each variant exactly as ``biocnn baseline mnist`` does (same loop, epochs, batch,
learning rate, seed handling; the thread count changes float rounding, so a seed's result
can differ from the command's) on centred training digits and reports the centred test
accuracy over several seeds (mean ± std) and the training time per variant. Variants are
registered models plus keyword overrides, so every row is reproducible with
``--models``-style names. ``--cost`` instead times each variant's training step (batch 128,
channels-last, as the baseline trains) and evaluation (batch 256) side by side, in
alternating rounds, relative to the first variant.

Usage::

    python bench/accuracy_tax.py --seeds 0,1,2,3,4
    python bench/accuracy_tax.py --data-dir data/fashion-mnist --variants invariant,gap_zero_pad
    python bench/accuracy_tax.py --limit 12000 --seeds 0,1 --variants all
    python bench/accuracy_tax.py --cost --variants invariant/d112,invariant/centroid+maxfilter+d112+w96
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results, set_threads  # noqa: E402

from biocnn.data import TensorData  # noqa: E402
from biocnn.engine import fit  # noqa: E402
from biocnn.metrics import accuracy  # noqa: E402
from biocnn.models import create_model  # noqa: E402
from biocnn.runtime import freed_memory_reused, seed_everything  # noqa: E402
from mnist_baseline.experiment import BaselineConfig, _load, _predictor, _to_tensor, _train_config  # noqa: E402
from mnist_baseline.shifts import centered  # noqa: E402

# row name -> (registered model, keyword overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "gap_zero_pad": ("gap_zero_pad", {}),
    "gap_zero_pad/max": ("gap_zero_pad", {"pool": "max"}),
    "lenet_fc": ("lenet_fc", {"img_size": 28}),
    "invariant": ("invariant", {}),
    "invariant/avg": ("invariant", {"pool": "avg"}),
    "invariant/max": ("invariant", {"pool": "max"}),
    "invariant/maxfilter": ("invariant", {"max_filter": True}),
    "invariant/maxfilter+max": ("invariant", {"max_filter": True, "pool": "max"}),
    "invariant/norm_down": ("invariant", {"order": "conv_norm_down"}),
    "invariant/norm_down+max": ("invariant", {"order": "conv_norm_down", "pool": "max"}),
    "invariant/blur3": ("invariant", {"blur": 3}),
    "invariant/wide": ("invariant", {"widths": (48, 96, 192)}),
    "invariant/depth2": ("invariant", {"depths": 2}),
    "invariant/maxfilter+depth2": ("invariant", {"max_filter": True, "depths": 2}),
    "gap_zero_pad/depth2": ("gap_zero_pad", {"depths": 2}),
    "invariant/maxfilter+d112": ("invariant", {"max_filter": True, "depths": (1, 1, 2)}),
    "invariant/maxfilter+d112+w96": ("invariant", {"max_filter": True, "depths": (1, 1, 2),
                                                   "widths": (32, 64, 96)}),
    "gap_zero_pad/canonical": ("gap_zero_pad", {"canonical": True}),
    "invariant/canonical+maxpool": ("invariant", {"canonical": True, "downsample": "maxpool",
                                                  "order": "conv_norm_down"}),
    # APS phases from the input's centroid (the first is the baseline's invariant)
    "invariant/centroid+maxfilter+d112": ("invariant", {"phase": "centroid", "max_filter": True,
                                                        "depths": (1, 1, 2)}),
    "invariant/centroid+maxfilter+d112+w96": ("invariant", {"phase": "centroid",
                                                            "max_filter": True,
                                                            "depths": (1, 1, 2),
                                                            "widths": (32, 64, 96)}),
    "invariant/maxfilter+d122": ("invariant", {"max_filter": True, "depths": (1, 2, 2)}),
    "invariant/maxfilter+narrow_depth2": ("invariant", {"max_filter": True, "depths": 2,
                                                        "widths": (24, 48, 96)}),
    "invariant/d112": ("invariant", {"depths": (1, 1, 2)}),
    "invariant/d112+zeros": ("invariant", {"depths": (1, 1, 2), "padding": "zeros"}),
    "invariant/narrow_depth2": ("invariant", {"depths": 2, "widths": (24, 48, 96)}),
    "gap_zero_pad/d112": ("gap_zero_pad", {"depths": (1, 1, 2)}),
}


def cost(names: list[str], rounds: int) -> None:
    """Median training step (ms) and evaluation (µs per image) of each variant, measured in
    alternating rounds in one process; ratios to the first variant."""
    torch.manual_seed(0)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y, xe = torch.randint(0, 10, (128,)), torch.randn(256, 1, 28, 28)
    runs = {}
    for name in names:
        arch, kwargs = VARIANTS[name]
        model = create_model(arch, num_classes=10, **kwargs).to(memory_format=torch.channels_last)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), 3e-3), [], [])
    for _ in range(rounds):
        for model, opt, steps, evals in runs.values():
            model.train()
            for i in range(11):  # the first step warms up
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i:
                    steps.append(1e3 * (time.perf_counter() - t0))
            model.eval()
            with torch.inference_mode():
                model(xe)
                t0 = time.perf_counter()
                for _ in range(4):
                    model(xe)
                evals.append(1e6 * (time.perf_counter() - t0) / (4 * len(xe)))
    base = names[0]
    step0, eval0 = statistics.median(runs[base][2]), statistics.median(runs[base][3])
    rows, payload = [], {}
    for name, (_, _, steps, evals) in runs.items():
        st, ev = statistics.median(steps), statistics.median(evals)
        rows.append([name, f"{st:.1f}", f"{st / step0:.2f}x", f"{ev:.0f}", f"{ev / eval0:.2f}x"])
        payload[name] = {"step_ms": st, "eval_us_per_image": ev}
    print_table(f"cost, {torch.get_num_threads()} thread(s), {rounds} rounds",
                ["variant", "step ms", "vs first", "eval µs/img", "vs first"], rows)
    save_results("accuracy_tax_cost", {"rounds": rounds, "variants": payload})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="gap_zero_pad,invariant,invariant/max,invariant/maxfilter",
                    help=f"comma-separated rows, or 'all': {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--data-dir", default=None, help="IDX folder (default: bundled MNIST)")
    ap.add_argument("--epochs", type=int, default=BaselineConfig.epochs)
    ap.add_argument("--lr", type=float, default=BaselineConfig.lr)
    ap.add_argument("--limit", type=int, default=0, help="first N training digits (0 = all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="accuracy_tax", help="results file name")
    ap.add_argument("--cost", action="store_true", help="time step and evaluation instead")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds for --cost")
    args = ap.parse_args()
    set_threads(args.threads)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if args.cost:
        return cost(names, args.rounds)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, payload = [], {}
    for name in names:
        arch, kwargs = VARIANTS[name]
        accs, secs = [], []
        for seed in seeds:
            cfg = BaselineConfig(epochs=args.epochs, lr=args.lr, seed=seed, limit=args.limit,
                                 data_dir=args.data_dir, progress=False, device="cpu")
            _, xtr, ytr, xte, yte = _load(cfg)
            train = TensorData(_to_tensor(centered(xtr, cfg.canvas)), torch.from_numpy(ytr))
            seed_everything(seed)
            model = create_model(arch, num_classes=int(ytr.max()) + 1, **kwargs)
            t0 = time.perf_counter()
            with freed_memory_reused(True):
                fit(model, train, None, _train_config(cfg, model))
            secs.append(time.perf_counter() - t0)
            preds = _predictor(model, torch.device("cpu"))(centered(xte, cfg.canvas))
            accs.append(100 * accuracy(preds, yte))
            print(f"{name} seed {seed}: {accs[-1]:.2f} % ({secs[-1]:.0f} s)", flush=True)
        params = sum(p.numel() for p in model.parameters())
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append([name, f"{params:,}", f"{statistics.mean(accs):.2f} ± {std:.2f}",
                     f"{min(accs):.2f}", f"{statistics.mean(secs):.0f}"])
        payload[name] = {"model": arch, "kwargs": kwargs, "parameters": params,
                         "accuracy": accs, "seconds": secs}
    print_table(f"centred test accuracy, {args.epochs} epochs, seeds {args.seeds}",
                ["variant", "params", "mean ± std %", "min %", "train s"], rows)
    save_results(args.name, {"data_dir": args.data_dir, "epochs": args.epochs, "seeds": seeds,
                             "limit": args.limit, "variants": payload})


if __name__ == "__main__":
    main()
