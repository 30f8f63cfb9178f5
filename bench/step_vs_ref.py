"""Training step of this tree vs an earlier commit, side by side in one run.

Each round runs one fresh process per tree (this one and ``--ref``, checked out into a
temporary git worktree), alternating the order; each trains ``--model`` on random
in-memory images through :func:`biocnn.engine.fit` for two epochs and reports the images/s
of the second (warm) epoch. The ratio this/ref is paired round by round.

Usage
-----
    python bench/step_vs_ref.py --ref 164d313                  # invariant_m @ 128 px, 2 threads
    python bench/step_vs_ref.py --ref 164d313 --size 64 --threads 1 --rounds 5
    python bench/step_vs_ref.py --ref 83d4490 --model invariant --size 28 --batch 128 \
        --steps 40 --channels-last --classes 10 --name step_vs_ref_mnist \
        --kwargs '{"widths": [32, 64, 128], "depths": [1, 1, 2], "max_filter": true, "phase": "centroid"}'

Writes ``bench/results/<--name>.json`` (default ``step_vs_ref``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import console, paired_ratios, print_table, save_results, spread

ROOT = Path(__file__).resolve().parents[1]

_SNIPPET = """
import json, sys, torch
torch.set_num_threads({threads})
from biocnn.config import TrainConfig
from biocnn.engine import fit
try:
    from biocnn.data import TensorData
except ImportError:  # older trees
    from biocnn.engine import TensorData
from biocnn.models import create_model
g = torch.Generator().manual_seed(0)
n = {batch} * {steps}
data = TensorData(torch.randn(n, 1, {size}, {size}, generator=g),
                  torch.randint(0, {classes}, (n,), generator=g))
widths = json.loads({widths!r})
model = create_model("{model}", num_classes={classes},
                     **{{**({{"widths": widths}} if widths else {{}}), **json.loads({kwargs!r})}})
cfg = TrainConfig(epochs=2, batch_size={batch}, device="cpu", progress=False, bn_recalibrate=0,
                  channels_last={channels_last})
print(json.dumps(fit(model, data, None, cfg).history[-1]["images_per_s"]))
"""


def _run(tree: Path, args: argparse.Namespace) -> float:
    code = _SNIPPET.format(**vars(args))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tree)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="git commit to compare with")
    p.add_argument("--model", default="invariant_m")
    p.add_argument("--widths", default="[16, 32, 64, 128]", help="JSON list; null: the model's own")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--kwargs", default="{}", help="model options as JSON (override --widths)")
    p.add_argument("--channels-last", action="store_true", help="train channels-last (as the MNIST baseline)")
    p.add_argument("--name", default="step_vs_ref", help="results file name")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="biocnn-ref-") as tmp:
        ref = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.ref],
                       check=True, capture_output=True)
        try:
            series: dict[str, list[float]] = {"this": [], "ref": []}
            for r in range(args.rounds):
                order = ("this", "ref") if r % 2 == 0 else ("ref", "this")
                for name in order:
                    series[name].append(_run(ROOT if name == "this" else ref, args))
                console.print(f"round {r + 1}: this {series['this'][-1]:.1f}, "
                              f"ref {series['ref'][-1]:.1f} img/s")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)],
                           capture_output=True)
    ratio = spread(paired_ratios(series["this"], series["ref"]))
    print_table(f"{args.model} @ {args.size} px, batch {args.batch}, {args.threads} threads: "
                f"this tree vs {args.ref}", ["tree", "images/s (median)", "this / ref"],
                [("this", f"{spread(series['this'])['median']:.1f}", f"{ratio['median']:.3f}"),
                 (args.ref, f"{spread(series['ref'])['median']:.1f}", "")])
    payload = {"args": vars(args), "series": series, "ratio": ratio}
    save_results(args.name, payload)
    console.print(json.dumps(ratio))
    return payload


if __name__ == "__main__":
    main()
