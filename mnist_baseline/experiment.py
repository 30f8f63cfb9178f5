"""The corner-shift experiment: train a model zoo on centred digits, test every placement.

Each model is trained on centred MNIST (optionally with random-placement augmentation)
and evaluated on: the centred test set, the four corner sets (each digit's bounding box
moved to touch a corner), every valid placement of a subset of test digits (mean and
worst-case accuracy), and consistency under two random placements (Zhang 2019) and under
random circular shifts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from biocnn.checkpoint import save_checkpoint
from biocnn.config import TrainConfig, to_plain
from biocnn.data import TensorData
from biocnn.engine import fit, predict_logits
from biocnn.errors import BiocnnError
from biocnn.metrics import accuracy, agreement, circular_consistency
from biocnn.models import create_model, list_models
from biocnn.runtime import resolve_device, seed_everything
from mnist_baseline.data import MnistData, load_mnist
from mnist_baseline.shifts import (
    CORNERS,
    bounding_boxes,
    centered,
    corners,
    iter_placements,
    placement_counts,
    random_placements,
)

__all__ = ["ZOO", "BaselineConfig", "ModelResult", "run_experiment", "random_placement_augment"]

SHIFT_KINDS = ("corners", "all", "random", "none")
N_EXAMPLES = 6  # test digits shown per corner in report.png

# experiment entry -> (registered model, extra kwargs, trained with random placements)
ZOO: dict[str, tuple[str, dict[str, Any], bool]] = {
    "lenet_fc": ("lenet_fc", {}, False),
    "lenet_fc_aug": ("lenet_fc", {}, True),
    "gap_zero_pad": ("gap_zero_pad", {}, False),
    "invariant": ("invariant", {}, False),
    "invariant_aug": ("invariant", {}, True),
    "invariant_blurpool": ("invariant_blurpool", {}, False),
}


@dataclass
class BaselineConfig:
    """Resolved options of ``biocnn baseline mnist`` (also the TOML keys)."""

    shift: str = "corners"
    canvas: int = 28
    models: tuple[str, ...] = ("lenet_fc", "lenet_fc_aug", "gap_zero_pad", "invariant")
    epochs: int = 2
    augment: bool = False  # random-placement augmentation for every model (not only *_aug)
    limit: int = 0  # 0 = full data; else the first N train and N // 6 test digits
    all_shift_limit: int = 500  # test digits evaluated at every valid placement
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    num_threads: int = 0  # 0 = torch default
    channels_last: bool = True
    progress: bool = True

    def train_config(self) -> TrainConfig:
        """The training-loop options every model of the experiment shares."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
            device=self.device, progress=self.progress, channels_last=self.channels_last,
        )


@dataclass
class ModelResult:
    """One row of ``results.json``; accuracies are fractions in [0, 1]."""

    centered: float
    corners: dict[str, float]
    worst_corner: float
    all_shift_mean: float
    all_shift_worst_case: float
    consistency: float
    circular_consistency: float
    epochs: int
    train_seconds: float
    augment: bool
    model: str
    parameters: int


def random_placement_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Move each digit's non-zero bounding box to a uniformly random valid place (zero fill).

    ``(B, 1, H, W)`` → ``(B, 1, H, W)``; nothing is clipped. Exact integer translation, so
    the augmented digits are drawn from the same placements the test sets use.
    """
    from biocnn.augment import shift_images

    b, _, h, w = x.shape
    nz = x[:, 0] != 0
    rows, cols = nz.any(2), nz.any(1)  # (B, H), (B, W)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    top = torch.where(rows, ar_h, h).amin(1)
    bottom = torch.where(rows, ar_h, -1).amax(1) + 1
    left = torch.where(cols, ar_w, w).amin(1)
    right = torch.where(cols, ar_w, -1).amax(1) + 1
    empty = bottom <= top
    lo = torch.stack([-top, -left], 1).where(~empty[:, None], 0).cpu()
    hi = torch.stack([h - bottom, w - right], 1).where(~empty[:, None], 0).cpu()
    u = torch.rand(b, 2, generator=generator)
    shift = lo + torch.floor(u * (hi - lo + 1)).long()
    return shift_images(x, shift.float())


def _to_tensor(images: np.ndarray) -> Tensor:
    """uint8 ``(N, H, W)`` → float ``(N, 1, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def _load(cfg: BaselineConfig) -> tuple[MnistData, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_mnist(Path(cfg.data_dir) if cfg.data_dir else None)
    xtr, ytr, xte, yte = data.train_images, data.train_labels, data.test_images, data.test_labels
    if cfg.limit:
        xtr, ytr = xtr[: cfg.limit], ytr[: cfg.limit]
        n_test = max(100, cfg.limit // 6)
        xte, yte = xte[:n_test], yte[:n_test]
    if cfg.canvas < max(data.frame):
        boxes = bounding_boxes(np.concatenate([xtr, xte]))
        need = int(max((boxes[:, 2] - boxes[:, 0]).max(), (boxes[:, 3] - boxes[:, 1]).max()))
        if cfg.canvas < need:
            raise BiocnnError(f"--canvas {cfg.canvas} is smaller than the largest digit ({need} px)")
    return data, xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def _evaluate(
    model: nn.Module, cfg: BaselineConfig, xte: np.ndarray, yte: np.ndarray, device: torch.device
) -> dict[str, Any]:
    """Every shift metric of one trained model on the test digits ``(N, H, W)`` uint8."""

    def predict(images: np.ndarray | Tensor) -> np.ndarray:
        x = images if isinstance(images, Tensor) else _to_tensor(images)
        return predict_logits(model, x, batch_size=1024, device=device).argmax(1).numpy()

    out: dict[str, Any] = {"centered": accuracy(predict(centered(xte, cfg.canvas)), yte)}
    corner_sets = corners(xte, cfg.canvas)
    corner_preds = {k: predict(corner_sets[k]) for k in CORNERS}
    out["corners"] = {k: accuracy(corner_preds[k], yte) for k in CORNERS}
    out["example_predictions"] = {k: corner_preds[k][:N_EXAMPLES] for k in CORNERS}
    out["worst_corner"] = min(out["corners"].values())

    sub = xte[: cfg.all_shift_limit] if cfg.all_shift_limit else xte
    boxes = bounding_boxes(sub)
    counts = placement_counts(boxes, cfg.canvas)
    always_right = np.ones(len(sub), bool)
    n_right = np.zeros(len(sub), np.int64)
    pending: list = []  # group placements into big batches: one forward per ~4096 images

    def flush() -> None:
        index = np.concatenate([p.index for p in pending])
        ok = predict(np.concatenate([p.images for p in pending])) == yte[index]
        np.logical_and.at(always_right, index, ok)
        np.add.at(n_right, index, ok)
        pending.clear()

    for p in iter_placements(sub, cfg.canvas, boxes=boxes, batch_size=4096):
        pending.append(p)
        if sum(len(q.index) for q in pending) >= 4096:
            flush()
    if pending:
        flush()
    out["all_shift_mean"] = float((n_right / counts).mean())  # each digit weighted equally
    out["all_shift_worst_case"] = float(always_right.mean())
    out["all_shift_digits"] = len(sub)
    out["all_shift_placements"] = int(counts.sum())

    view_a, _ = random_placements(xte, cfg.canvas, seed=cfg.seed + 1)
    view_b, _ = random_placements(xte, cfg.canvas, seed=cfg.seed + 2)
    out["consistency"] = agreement(predict(view_a), predict(view_b))
    out["circular_consistency"] = circular_consistency(
        predict, _to_tensor(centered(xte, cfg.canvas)),
        torch.Generator().manual_seed(cfg.seed + 3),
    )
    if cfg.shift == "random":
        out["random"] = accuracy(predict(view_a), yte)
    return out


def run_experiment(
    cfg: BaselineConfig, out_dir: Path, log: Any = print
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and evaluate every model of ``cfg.models``; write checkpoints into ``out_dir``.

    Parameters
    ----------
    cfg
        Resolved configuration.
    out_dir
        Existing directory for ``<model>.pt`` checkpoints (the caller writes the report).
    log
        Callable for one-line progress messages.

    Returns
    -------
    results
        The ``results.json`` document: ``{"dataset", "shift", "canvas", "models": {...}}``.
    examples
        For ``report.png``: ``digits`` (corner → ``(n, S, S)``), ``labels`` ``(n,)`` and
        ``predictions`` (model → corner → ``(n,)``) of the first test digits.
    """
    if cfg.shift not in SHIFT_KINDS:
        raise BiocnnError(f"unknown --shift {cfg.shift!r}: use one of {', '.join(SHIFT_KINDS)}")
    unknown = [m for m in cfg.models if m not in ZOO and m not in list_models()]
    if unknown:
        raise BiocnnError(
            f"unknown model {unknown[0]!r}; available: {', '.join(sorted(set(ZOO) | set(list_models())))}"
        )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    data, xtr, ytr, xte, yte = _load(cfg)
    train_set = TensorData(_to_tensor(centered(xtr, cfg.canvas)), torch.from_numpy(ytr))
    num_classes = int(max(ytr.max(), yte.max()) + 1)

    results: dict[str, Any] = {
        "dataset": "mnist", "shift": cfg.shift, "canvas": cfg.canvas,
        "train_images": len(xtr), "test_images": len(xte), "data_source": str(data.source),
        "models": {},
    }
    corner_sets = corners(xte[:N_EXAMPLES], cfg.canvas)
    examples: dict[str, Any] = {"digits": corner_sets, "labels": yte[:N_EXAMPLES], "predictions": {}}
    for name in cfg.models:
        arch, extra, aug = ZOO.get(name, (name, {}, False))
        aug = aug or cfg.augment
        seed_everything(cfg.seed)
        kwargs = {**extra, **({"img_size": cfg.canvas} if arch == "lenet_fc" else {})}
        model = create_model(arch, num_classes=num_classes, in_chans=1, **kwargs)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"training {name} ({arch}, {n_params:,} parameters, "
            f"augment={aug})")
        fitted = fit(model, train_set, None, cfg.train_config(),
                     augment=random_placement_augment if aug else None, desc=name)
        t0 = time.perf_counter()
        metrics = _evaluate(model, cfg, xte, yte, device)
        row = ModelResult(
            centered=metrics["centered"], corners=metrics["corners"],
            worst_corner=metrics["worst_corner"], all_shift_mean=metrics["all_shift_mean"],
            all_shift_worst_case=metrics["all_shift_worst_case"],
            consistency=metrics["consistency"],
            circular_consistency=metrics["circular_consistency"],
            epochs=cfg.epochs, train_seconds=round(fitted.train_seconds, 2), augment=aug,
            model=arch, parameters=n_params,
        )
        eval_seconds = time.perf_counter() - t0
        log(f"  {name}: centred {100 * row.centered:.2f}%, worst corner {100 * row.worst_corner:.2f}%"
            f" (train {fitted.train_seconds:.0f} s, evaluate {eval_seconds:.0f} s)")
        results["models"][name] = {
            **to_plain(row),
            "eval_seconds": round(eval_seconds, 2),
            **({"random": metrics["random"]} if "random" in metrics else {}),
        }
        examples["predictions"][name] = metrics["example_predictions"]
        results["all_shift_digits"] = metrics["all_shift_digits"]
        results["all_shift_placements"] = metrics["all_shift_placements"]
        save_checkpoint(out_dir / f"{name}.pt", model, {
            "class_names": [str(i) for i in range(num_classes)],
            "experiment_entry": name, "config": to_plain(cfg),
            "preprocess": {"scale": 1 / 255.0, "canvas": cfg.canvas},
            "results": results["models"][name],
        })
    return results, examples
