"""`biocnn select` wall time, start-up included, and the selector's rotation behaviour.

Simulates ``--n`` class averages of ``--size`` px (half good, half junk, `biocnn simulate
--kind class-averages`), then:

* runs ``biocnn select STACK --out DIR`` (the shipped model unless ``--model``) ``--rounds``
  times in fresh processes and reports the wall time of each (target: < 10 s for 200
  averages of 128 px on 2 cores);
* scores the same images rotated by 90°, 180°, 270° and mirrored (exact for a D4 model) and
  by 10 random angles (bilinear), and reports the largest / median change of P(good).

Usage
-----
    python bench/select_speed.py                   # 200 x 128 px, 3 rounds
    python bench/select_speed.py --model runs/selector/best.pt --n 400

Writes ``bench/results/select_speed.json``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import console, print_table, save_results, spread

__all__ = ["main"]


def _simulate(folder: Path, n: int, size: int) -> Path:
    subprocess.run([sys.executable, "-m", "biocnn", "simulate", str(folder), "--kind",
                    "class-averages", "--n-per-class", str(n // 2), "--box", str(size),
                    "--seed", "77", "--no-progress"], check=True, capture_output=True)
    import mrcfile

    with mrcfile.open(folder / "good" / "good.mrcs") as g, mrcfile.open(folder / "junk" / "junk.mrcs") as j:
        stack = np.concatenate([g.data, j.data]).astype(np.float32)
    out = folder / "averages.mrcs"
    from biocnn.io.mrc import write_mrc

    write_mrc(out, stack, apix=1.0, is_stack=True)
    return out


def _rotation_changes(model: str | None, stack: Path) -> dict[str, float]:
    from biocnn.augment import affine_sample
    from biocnn.checkpoint import load_classifier
    from biocnn.data import build_dataset
    from biocnn.tasks.select import SHIPPED_MODEL

    clf = load_classifier(model or SHIPPED_MODEL, "cpu")
    good = clf.class_names.index("good")
    temperature = float(clf.meta.get("temperature", 1.0))
    data = build_dataset(stack, preprocess=clf.preprocess, labeled=False)
    x = clf.standardize(data.batch(np.arange(len(data)))[0])

    def p_good(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (clf.model(images) / temperature).softmax(1)[:, good].numpy()

    base = p_good(x)
    exact = [p_good(torch.rot90(x, k, (2, 3))) for k in (1, 2, 3)] + [p_good(x.flip(-1))]
    g = torch.Generator().manual_seed(0)
    turned = []
    for _ in range(10):
        angle = torch.rand(len(x), generator=g) * 2 * math.pi
        turned.append(p_good(affine_sample(x, angle, torch.zeros(len(x), 2))))
    d_exact = np.abs(np.stack(exact) - base)
    d_any = np.abs(np.stack(turned) - base)
    return {"d4_max_change": float(d_exact.max()), "any_angle_median_change": float(np.median(d_any)),
            "any_angle_p90_change": float(np.quantile(d_any, 0.9))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped selector)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="biocnn-select-") as tmp:
        stack = _simulate(Path(tmp) / "sim", args.n, args.size)
        seconds = []
        for r in range(args.rounds):
            cmd = [sys.executable, "-m", "biocnn", "select", str(stack), "--out",
                   str(Path(tmp) / f"out{r}")]
            if args.model:
                cmd += ["--model", args.model]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            seconds.append(time.perf_counter() - t0)
        rotation = _rotation_changes(args.model, stack)
    s = spread(seconds)
    print_table(f"biocnn select on {args.n} class averages of {args.size} px (fresh process each)",
                ["median s", "min s", "max s", "D4 max ΔP", "any angle median ΔP", "p90 ΔP"],
                [(f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}",
                  f"{rotation['d4_max_change']:.2e}", f"{rotation['any_angle_median_change']:.4f}",
                  f"{rotation['any_angle_p90_change']:.4f}")])
    payload = {"args": vars(args), "seconds": seconds, "rotation": rotation}
    save_results("select_speed", payload)
    console.print(f"median {s['median']:.2f} s")
    return payload


if __name__ == "__main__":
    main()
