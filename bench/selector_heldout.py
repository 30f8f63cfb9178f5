"""Score a calibrated selector on a held-out simulated class-average set it was not calibrated on.

Reads the set through its ``particles.star`` (``rlnClassName`` good/junk and
``biocnnKind``), applies the checkpoint's own temperature and threshold, and prints
AUC, accuracy, good kept, junk rejected per kind, and the score change under the 8
rotations by 90° and flips; writes ``bench/results/<name>.json``.

Usage::

    biocnn simulate ca_test/ --config configs/sim_class_averages_heldout.toml --box 64 --seed 2000
    python bench/selector_heldout.py biocnn/weights/class_selector.pt ca_test/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save_results  # noqa: E402

from biocnn.checkpoint import load_classifier  # noqa: E402
from biocnn.data.datasets import build_dataset  # noqa: E402
from biocnn.engine import predict_logits  # noqa: E402
from biocnn.io.star import read_star  # noqa: E402
from biocnn.models.d4 import d4_transform  # noqa: E402
from biocnn.tasks.calibrate import roc_auc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="calibrated selector checkpoint")
    ap.add_argument("data", type=Path, help="simulated class-average folder (good/, junk/, particles.star)")
    ap.add_argument("--name", default="selector_heldout", help="results file name")
    args = ap.parse_args()
    clf = load_classifier(args.model, "cpu")
    star = args.data / "particles.star"
    data = build_dataset(str(star), preprocess=clf.preprocess, views=clf.views,
                         label_column="rlnClassName", class_names=clf.class_names)
    table = read_star(star).particles
    kinds = table["biocnnKind"].astype(str).to_numpy()
    good = clf.class_names.index("good")
    temperature = float(clf.meta.get("temperature", 1.0))
    threshold = float(clf.meta.get("threshold", 0.5))
    x = clf.standardize(torch.as_tensor(data.batch(np.arange(len(data)))[0]))
    probs = []
    for g in range(8):  # every rotation by 90° and flip: the score must not move
        logits = predict_logits(clf.model, d4_transform(x, g), batch_size=256, device="cpu")
        probs.append((logits.double() / temperature).softmax(1)[:, good].numpy())
    p = probs[0]
    d4_change = np.max(np.abs(np.stack(probs) - p), axis=0)
    is_good = data.labels == good
    keep = p >= threshold
    record = {
        "model": args.model, "data": str(args.data), "images": len(p),
        "temperature": temperature, "threshold": threshold,
        "auc": roc_auc(p, is_good), "accuracy": float((keep == is_good).mean()),
        "good_kept": float(keep[is_good].mean()), "junk_rejected": float((~keep[~is_good]).mean()),
        "junk_rejected_by_kind": {k: float((~keep[kinds == k]).mean())
                                  for k in sorted(set(kinds[~is_good]))},
        "d4_change_max": float(d4_change.max()), "d4_change_median": float(np.median(d4_change)),
    }
    rows = [[k, f"{v:.4f}"] for k, v in record.items() if isinstance(v, float)]
    rows += [[f"junk rejected: {k}", f"{v:.3f}"] for k, v in record["junk_rejected_by_kind"].items()]
    print_table(f"{args.model} on {args.data}", ["metric", "value"], rows)
    save_results(args.name, record)


if __name__ == "__main__":
    main()
