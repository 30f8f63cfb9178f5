"""The one training loop, evaluation, prediction and checkpoints.

Read :func:`fit` top to bottom: build loaders → optimiser and warm-up/cosine schedule →
for each epoch: augment, forward, backward, step; evaluate; log a JSON line; keep the best
checkpoint; stop early if asked. It serves every dataset (MNIST tensors in memory, lazy
MRC stacks) on CPU or CUDA, in one process or under ``torchrun`` (DDP).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from biocnn.atomic import disk_errors, write_text
from biocnn.checkpoint import save_checkpoint
from biocnn.config import TrainConfig, to_plain
from biocnn.data.loader import BatchDataset, TensorData, make_loader
from biocnn.errors import BiocnnError
from biocnn.runtime import (
    dist_info,
    freed_memory_reused,
    is_main_process,
    resolve_device,
    seed_everything,
)

__all__ = [
    "TrainConfig",
    "FitResult",
    "fit",
    "TrainingInterrupted",
    "predict_logits",
    "evaluate",
    "recalibrate_batchnorm",
]

Augmenter = Callable[[Tensor, torch.Generator], Tensor]


Transform = Callable[[Tensor], Tensor]


def _train_loader(data: BatchDataset, cfg: TrainConfig) -> Any:
    """This rank's shuffled (or class-balanced) batches of ``data``."""
    info = dist_info()
    try:
        return make_loader(data, cfg.batch_size, shuffle=True, balance_classes=cfg.balance_classes,
                           seed=cfg.seed, rank=info.rank, world=info.world_size,
                           num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())
    except ValueError as exc:  # only a dataset without labels gets here: options are checked
        raise BiocnnError(f"balance_classes: {exc}") from None


@dataclass
class FitResult:
    """What :func:`fit` returns; the model itself is left holding the best weights."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    best_val_loss: float = float("nan")
    train_seconds: float = 0.0


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on norms and biases (1-D parameters)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        make = functools.partial(torch.optim.AdamW, groups, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        make = functools.partial(torch.optim.SGD, groups, lr=cfg.lr, momentum=cfg.momentum,
                                 nesterov=True)
    else:
        raise BiocnnError(f"unknown optimizer {cfg.optimizer!r}: use adamw or sgd")
    # the fused kernel updates all parameters in one pass (AdamW steps 3-6x faster on CPU);
    # devices or torch versions without it (CPU before torch 2.4) refuse it in the constructor
    try:
        return make(fused=True)
    except RuntimeError:
        return make()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _progress(enabled: bool) -> Any:
    """A rich progress bar (or a silent stand-in) with loss / accuracy / throughput fields."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # keeps stdout clean for --json
        disable=not enabled,
        transient=False,
    )


def _setup_distributed(device: torch.device) -> None:
    info = dist_info()
    if info.distributed and not dist.is_initialized():
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # every rank would start one thread per core: N ranks on a machine oversubscribe
            # it N-fold (4x slower measured with 2 ranks on 2 cores). torchrun sets
            # OMP_NUM_THREADS=1; other launchers (spawn, srun) may not, so share the cores.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
            torch.set_num_threads(max(1, torch.get_num_threads() // local))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP keeps the parameters equal but each rank updates its running statistics on its own
    batches; without this, ranks would evaluate different models and could disagree on the
    best epoch or on early stopping (and then deadlock in the next collective).
    """
    if dist.is_available() and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _all_reduce_sum(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _prepare(device: torch.device, standardize: nn.Module | None,
             channels_last: bool = False) -> Transform:
    """Move a batch to the device as float32, standardise it there, set its memory format."""
    if standardize is not None:
        standardize.to(device)

    def prepare(x: Tensor) -> Tensor:
        x = x.to(device, non_blocking=True).float()
        if standardize is not None:
            x = standardize(x)
        return _as_channels_last(x) if channels_last else x

    return prepare


def _as_channels_last(t: Tensor) -> Tensor:
    """``(N, C, H, W)`` with channels-last strides, also where ``C`` or ``H W`` is 1: there
    ``contiguous(memory_format=channels_last)`` keeps the NCHW strides, and a convolution
    given such a weight and input writes NCHW (max-pool, norm and ReLU after it then run
    their slower NCHW kernels; BENCHMARKS.md)."""
    n, c, h, w = t.shape
    if t.stride() == (c * h * w, 1, w * c, c):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


class TrainingInterrupted(Exception):  # noqa: N818  a stop the user asked for, not an error
    """Training stopped at a step boundary on SIGINT/SIGTERM; ``last.pt`` holds the state."""

    def __init__(self, epoch: int, step: int, signum: int, checkpoint: Path | None) -> None:
        self.epoch, self.step, self.signum, self.checkpoint = epoch, step, signum, checkpoint
        super().__init__(f"interrupted in epoch {epoch} after step {step}")


class _StopRequests:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only);
    a second Ctrl-C while the first is honoured interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, device: torch.device) -> int:
        """The signal number if any rank was asked to stop (all ranks agree), else 0."""
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([self.signum], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item())
        return self.signum


def fit(
    model: nn.Module,
    train_data: BatchDataset,
    val_data: BatchDataset | None,
    cfg: TrainConfig,
    *,
    augment: Augmenter | None = None,
    out_dir: Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    standardize: nn.Module | None = None,
    resume: dict[str, Any] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` on ``train_data``; evaluate on ``val_data`` after every epoch.

    Parameters
    ----------
    model
        Built by :func:`biocnn.create_model`; maps ``(B, C, H, W)`` to ``(B, K)``.
    train_data, val_data
        Datasets with ``batch(indices)`` (:class:`~biocnn.data.TensorData`,
        :class:`~biocnn.data.MrcDataset`).
    cfg
        Loop options (epochs, optimiser, schedule, device, seed, ...).
    augment
        ``augment(x, generator)`` applied to every training batch ``(B, C, H, W)`` on the device.
    out_dir
        If given, rank 0 writes ``best.pt``, ``last.pt`` (with the full training state)
        and ``metrics.jsonl`` there after every epoch, and ``last.pt`` on interruption.
    checkpoint_meta
        Extra entries stored in each checkpoint (class names, preprocessing, config, ...).
    standardize
        Input module applied on the device to every batch before augmentation and the
        model (e.g. :class:`~biocnn.data.Standardize`); prediction applies the same one.
    resume
        The ``train_state`` of a ``last.pt`` (model weights already loaded): continue from
        it. On the CPU the result equals an uninterrupted run's bit for bit.
    desc
        Label of the progress bar.

    Returns
    -------
    FitResult
        Per-epoch history, best epoch (lowest validation loss) with its accuracy and loss,
        training time. ``model`` holds the weights of the best epoch (the last epoch
        without validation data).

    Raises
    ------
    TrainingInterrupted
        SIGINT or SIGTERM: the current step was finished and ``last.pt`` written.
    """
    device = resolve_device(cfg.device)
    with freed_memory_reused(device.type == "cpu"):  # no page faults per activation per step
        _setup_distributed(device)
        info = dist_info()
        main = is_main_process()
        aug_generator = seed_everything(cfg.seed + info.rank)  # augmentation differs per rank
        prepare = _prepare(device, standardize, cfg.channels_last)

        model.to(device)
        if cfg.channels_last:  # 4-D weights only: group convolutions keep 5-D ones
            for p in model.parameters():
                if p.dim() == 4:
                    p.data = _as_channels_last(p.data)
        net: nn.Module = model
        if info.distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            net = torch.compile(net)

        train_loader = _train_loader(train_data, cfg)
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise BiocnnError("the training set is empty")
        total_steps = cfg.epochs * steps_per_epoch
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        optimizer = _optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: _lr_factor(s, warmup, total_steps)
        )
        meta = {**(checkpoint_meta or {}), "train_config": to_plain(cfg)}
        metrics_path = out_dir / "metrics.jsonl" if out_dir is not None and main else None
        if metrics_path is not None:
            out_dir.mkdir(parents=True, exist_ok=True)

        result = FitResult()
        best_state: dict[str, Tensor] | None = None
        epochs_without_gain, first_epoch, skip = 0, 1, 0
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, seen this epoch
        elapsed = 0.0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            aug_generator.set_state(resume["aug_rng"][info.rank])
            torch.set_rng_state(resume["torch_rng"])
            result.history = [dict(row) for row in resume["history"]]
            result.best_epoch, result.best_val_acc = resume["best_epoch"], resume["best_val_acc"]
            # a state saved before losses chose the epoch: the kept epoch's own loss
            best_row = result.history[result.best_epoch - 1] if result.best_epoch else {}
            result.best_val_loss = resume.get("best_val_loss", best_row.get("val_loss", math.nan))
            if resume.get("best_state") is not None:
                best_state = {k: v.to(device) for k, v in resume["best_state"].items()}
            epochs_without_gain, elapsed = resume["epochs_without_gain"], resume["elapsed"]
            first_epoch, skip = resume["epoch"], resume["step"]
            sums = resume["sums"].to(device)
            if metrics_path is not None:  # rows of epochs the checkpoint has not seen go
                write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in result.history))

        def train_state(epoch: int, step: int, sums: Tensor) -> dict[str, Any]:
            """Everything a resumed run needs besides the weights (``step`` batches of ``epoch``
            done); every rank's augmentation RNG, so each resumes its own stream."""
            rngs = [aug_generator.get_state()]
            if info.distributed:
                rngs = [torch.empty_like(rngs[0]) for _ in range(info.world_size)]
                dist.all_gather(rngs, aug_generator.get_state().to(device))
                rngs = [r.cpu() for r in rngs]
            return {"epoch": epoch, "step": step, "sums": sums.detach().cpu(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "aug_rng": rngs, "torch_rng": torch.get_rng_state(),
                    "history": result.history, "best_epoch": result.best_epoch,
                    "best_val_acc": result.best_val_acc, "best_val_loss": result.best_val_loss,
                    "epochs_without_gain": epochs_without_gain,
                    "best_state": best_state, "elapsed": elapsed + time.perf_counter() - t_start}

        t_start = time.perf_counter()
        with _progress(cfg.progress and main) as bar, _StopRequests() as stop:
            for epoch in range(first_epoch, cfg.epochs + 1):
                train_loader.set_epoch(epoch)
                net.train()
                task = bar.add_task(f"{desc} {epoch}/{cfg.epochs}", total=steps_per_epoch,
                                    completed=skip, stats="")
                t_epoch = time.perf_counter()
                done = int(sums[2].item())
                for step, (x, y) in enumerate(train_loader.iter_from(skip), start=skip + 1):
                    x = prepare(x)
                    y = y.to(device, non_blocking=True)
                    if augment is not None:
                        x = augment(x, aug_generator)
                    with _autocast(device, cfg.amp):
                        logits = net(x)
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    sums += torch.stack([loss.detach().double() * len(y),
                                         (logits.detach().argmax(1) == y).sum().double(),
                                         torch.tensor(float(len(y)), device=device)])
                    if main and (step % 20 == 0 or step == steps_per_epoch):
                        seen = sums[2].item()  # syncs only here, for display
                        rate = (seen - done) / (time.perf_counter() - t_epoch)
                        bar.update(task, completed=step, stats=(
                            f"loss {sums[0].item() / seen:.4f}  acc {sums[1].item() / seen:.4f}  "
                            f"{rate:,.0f} img/s"
                        ))
                    signum = stop.requested(device)
                    if signum:
                        state = train_state(epoch, step, sums)
                        path = out_dir / "last.pt" if out_dir is not None else None
                        if main and path is not None:
                            save_checkpoint(path, model, {**meta, "epoch": epoch - 1}, state)
                        raise TrainingInterrupted(epoch, step, signum, path)
                skip = 0
                epoch_seconds = time.perf_counter() - t_epoch
                if cfg.bn_recalibrate > 0 and (val_data is not None or out_dir is not None
                                               or epoch == cfg.epochs):
                    # the running statistics are about to be used: validation, a checkpoint
                    recalibrate_batchnorm(model, train_loader, cfg.bn_recalibrate, prepare,
                                          amp=cfg.amp)
                _sync_buffers(model)
                totals = _all_reduce_sum(sums.clone())
                sums = torch.zeros_like(sums)
                row: dict[str, float] = {
                    "epoch": epoch,
                    "train_loss": float(totals[0] / totals[2]),
                    "train_acc": float(totals[1] / totals[2]),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": float(totals[2]) / epoch_seconds,
                    "seconds": epoch_seconds,
                }
                if val_data is not None:
                    ev = evaluate(model, val_data, batch_size=max(256, cfg.batch_size), device=device,
                                  num_workers=cfg.num_workers, amp=cfg.amp, standardize=standardize)
                    row.update(val_loss=ev["loss"], val_acc=ev["accuracy"])
                result.history.append(row)
                # lowest loss, not accuracy: a few hundred images make the accuracy tie
                if "val_loss" in row:
                    improved = (epoch == 1 or row["val_loss"] < result.best_val_loss
                                or math.isnan(result.best_val_loss))
                else:
                    improved = True
                if info.distributed:  # every rank keeps and stops as rank 0 decided
                    flag = torch.tensor([float(improved)], device=device)
                    dist.broadcast(flag, src=0)
                    improved = bool(flag.item())
                if improved:
                    result.best_epoch = epoch
                    result.best_val_acc = row.get("val_acc", row["train_acc"])
                    result.best_val_loss = row.get("val_loss", float("nan"))
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    epochs_without_gain = 0
                else:
                    epochs_without_gain += 1
                stopping = bool(cfg.patience and epochs_without_gain >= cfg.patience)
                state = train_state(epoch + 1, 0, sums) if out_dir is not None else None
                if main:
                    if "val_acc" in row:
                        bar.update(task, stats=bar.tasks[task].fields["stats"]
                                   + f"  val {row['val_acc']:.4f}")
                    if metrics_path is not None:
                        with disk_errors(metrics_path), open(metrics_path, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
                    if out_dir is not None:
                        if improved:
                            save_checkpoint(out_dir / "best.pt", model, {**meta, "epoch": epoch, **row})
                        save_checkpoint(out_dir / "last.pt", model, {**meta, "epoch": epoch, **row},
                                        state)
                if stopping:
                    break
                signum = stop.requested(device)
                if signum and epoch < cfg.epochs:
                    raise TrainingInterrupted(epoch + 1, 0, signum,
                                              out_dir / "last.pt" if out_dir is not None else None)
        result.train_seconds = elapsed + time.perf_counter() - t_start
        if best_state is not None and val_data is not None:
            model.load_state_dict(best_state)
        return result


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Any, images: int, prepare: Transform, *, amp: bool = False,
) -> int:
    """Re-estimate every BatchNorm layer's running mean/variance from the first batches of
    ``batches`` (an iterable of ``(x (B, C, H, W), y)``) that hold at least ``images``
    images, with the current weights. ``model`` is the plain model (not a DDP wrapper:
    ranks may read different numbers of batches; :func:`fit` then copies rank 0's result).

    During training the running statistics are momentum averages over batches seen while
    the weights were still moving, so at evaluation time they can lag far behind the
    final weights and the validation accuracy jumps from epoch to epoch (BENCHMARKS.md).
    Here they are replaced by plain averages over batches of the final weights ("precise
    BN"). The batches go through ``prepare`` (device, standardisation) but no augmentation,
    as the model will see data in evaluation. Returns the number of images used (0 when the
    model has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or images <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of the batches below
    model.train()
    seen = 0
    try:
        for x, _ in batches:
            x = prepare(x)
            with _autocast(x.device, amp):
                model(x)
            seen += len(x)
            if seen >= images:
                break
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen


def _tta_views(x: Tensor) -> list[Tensor]:
    """The 8 rotations/flips of ``(B, C, H, W)`` (dihedral group D4 on square images)."""
    views = [torch.rot90(x, k, (2, 3)) for k in range(4)]
    return views + [v.flip(-1) for v in views]


@torch.no_grad()
def _forward_all(
    model: nn.Module, loader: Any, device: torch.device, *, amp: bool = False,
    tta: bool = False, progress: bool = False, total: int | None = None,
    standardize: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits ``(N, K)`` and labels ``(N,)`` of every batch of ``loader`` (CPU, float32)."""
    model.eval()
    prepare = _prepare(device, standardize)
    logits, labels = [], []
    with _progress(progress) if progress else contextlib.nullcontext() as bar:
        task = bar.add_task("predict", total=total, stats="") if bar else None
        for x, y in loader:
            x = prepare(x)
            with _autocast(device, amp):
                if tta:
                    probs = torch.stack([model(v).float().softmax(1) for v in _tta_views(x)])
                    out = probs.mean(0).clamp_min(1e-12).log()
                else:
                    out = model(x).float()
            logits.append(out.cpu())
            labels.append(torch.as_tensor(y).long().cpu())
            if bar:
                bar.advance(task, len(x))
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def _eval_loader(data: BatchDataset | Tensor, batch_size: int, num_workers: int) -> Any:
    """Batches of ``data`` in order (a tensor is read as unlabelled images)."""
    if isinstance(data, Tensor):
        data = TensorData(data, torch.full((len(data),), -1, dtype=torch.long))
    return make_loader(data, batch_size, num_workers=num_workers,
                       pin_memory=torch.cuda.is_available())


def predict_logits(
    model: nn.Module,
    data: BatchDataset | Tensor,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    amp: bool = False,
    tta: bool = False,
    progress: bool = False,
    standardize: nn.Module | None = None,
) -> Tensor:
    """Class logits for every image.

    Parameters
    ----------
    data
        A tensor ``(N, C, H, W)`` or a dataset of ``(image (C, H, W), label)``.
    tta
        Test-time symmetrisation: average the class probabilities over the 8 rotations
        and flips of each image (returned as log-probabilities).
    standardize
        Input module applied on the device first (as in training).

    Returns
    -------
    Tensor
        ``(N, K)`` float32 on the CPU.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(device)
    loader = _eval_loader(data, batch_size, num_workers)
    logits, _ = _forward_all(model, loader, device, amp=amp, tta=tta, progress=progress,
                             total=len(data), standardize=standardize)
    return logits


def evaluate(
    model: nn.Module,
    data: BatchDataset,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    amp: bool = False,
    standardize: nn.Module | None = None,
) -> dict[str, Any]:
    """Loss and accuracy on a labelled dataset; also returns ``logits (N, K)`` and ``labels (N,)``."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(device)
    loader = _eval_loader(data, batch_size, num_workers)
    logits, labels = _forward_all(model, loader, device, amp=amp, standardize=standardize)
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    acc = (logits.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
    return {"loss": loss, "accuracy": acc, "logits": logits, "labels": labels}
