"""The training loop, prediction and checkpoints on tiny synthetic problems."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from biocnn import BiocnnError, create_model
from biocnn.checkpoint import load_checkpoint, save_checkpoint
from biocnn.config import TrainConfig
from biocnn.data import TensorData
from biocnn.engine import evaluate, fit, predict_logits, recalibrate_batchnorm


def _bars(n: int = 96, size: int = 12, seed: int = 0) -> TensorData:
    """Two classes: a horizontal or a vertical bar at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    y = torch.arange(n) % 2
    pos = torch.randint(0, size, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] = 1
        else:
            x[i, 0, :, pos[i]] = 1
    return TensorData(x + 0.05 * torch.randn(x.shape, generator=g), y)


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 16, "lr": 1e-2, "progress": False, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def test_fit_learns_and_writes_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(8, 16))
    result = fit(model, _bars(), _bars(seed=1), _cfg(), out_dir=tmp_path,
                 checkpoint_meta={"class_names": ["h", "v"]})
    assert result.best_val_acc >= 0.9
    assert len(result.history) == 4 and result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert {p.name for p in tmp_path.iterdir()} == {"best.pt", "last.pt", "metrics.jsonl"}

    loaded, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["class_names"] == ["h", "v"] and ckpt["model_name"] == "invariant"
    assert ckpt["epoch"] == result.best_epoch
    data = _bars(seed=2)
    assert torch.allclose(predict_logits(loaded, data.images, device="cpu"),
                          predict_logits(model, data.images, device="cpu"), atol=1e-5)


@pytest.mark.parametrize(("flip", "lr"), [(False, 1e-2), (True, 3e-4)])
def test_best_epoch_has_the_lowest_validation_loss(tmp_path: Path, flip: bool, lr: float) -> None:
    # clean: accuracy ties at 1.0 from the first epoch on while the loss falls; a quarter of
    # the validation labels flipped: the loss is lowest in an early epoch, not the last
    val = _bars(seed=1)
    if flip:
        labels = val.labels.clone()
        labels[::4] = 1 - labels[::4]
        val = TensorData(val.images, labels)
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(8, 16))
    result = fit(model, _bars(), val, _cfg(epochs=6, lr=lr), out_dir=tmp_path)
    losses = [row["val_loss"] for row in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert 0 < best < 5 if flip else best == 5
    assert result.best_epoch == best + 1 and result.best_val_loss == losses[best]
    assert result.best_val_acc == result.history[best]["val_acc"]
    _, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == best + 1
    # the model is left holding the best epoch's weights
    ev = evaluate(model, val, device="cpu")
    assert ev["loss"] == pytest.approx(losses[best], rel=1e-5)


def test_fit_is_reproducible_with_a_seed() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # fit reseeds; model init is the caller's
        model = create_model("invariant", num_classes=2, widths=(4, 8))
        fit(model, _bars(), None, _cfg(epochs=1, seed=7))
        outs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_recalibrate_batchnorm_gives_plain_averages_over_the_batches() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3, momentum=0.3)
    model = nn.Sequential(conv, bn).eval()
    data = _bars(n=64)
    batches = [(data.images[i : i + 16], data.labels[i : i + 16]) for i in range(0, 64, 16)]
    assert recalibrate_batchnorm(model, batches, 40, lambda x: x.float()) == 48  # whole batches
    with torch.no_grad():
        feats = [conv(x) for x, _ in batches[:3]]
    torch.testing.assert_close(bn.running_mean, torch.cat(feats).mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0))
    assert bn.momentum == 0.3 and not model.training  # restored
    assert recalibrate_batchnorm(nn.Sequential(conv), batches, 40, lambda x: x.float()) == 0


@pytest.mark.parametrize(("images", "tracked"), [(32, 2), (0, 6)])
def test_fit_recalibrates_batchnorm_before_use(images: int, tracked: int) -> None:
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(4, 8))
    fit(model, _bars(), None, _cfg(epochs=1, bn_recalibrate=images))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # recalibrated: 2 batches of 16 after a reset; else the 6 training steps of the epoch
    assert norms and all(int(m.num_batches_tracked) == tracked for m in norms)


def test_early_stopping_and_balanced_sampling() -> None:
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=(4, 8), norm="none")
    result = fit(model, _bars(), _bars(seed=1), _cfg(epochs=30, patience=1, balance_classes=True, lr=0.0))
    assert len(result.history) == 2  # lr 0 and no norm statistics: nothing changes after epoch 1


def test_augment_hook_runs_on_every_batch() -> None:
    calls = []

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    model = create_model("lenet_fc", num_classes=2, img_size=16)
    fit(model, _bars(n=40, size=16), None, _cfg(epochs=1), augment=aug)
    assert sum(calls) == 40


def test_tta_returns_log_probabilities() -> None:
    model = create_model("invariant", num_classes=3, widths=(4, 8)).eval()
    out = predict_logits(model, torch.randn(5, 1, 16, 16), tta=True, device="cpu")
    assert out.shape == (5, 3)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


def test_evaluate_reports_loss_and_accuracy() -> None:
    model = create_model("invariant", num_classes=2, widths=(4, 8))
    ev = evaluate(model, _bars(n=10), device="cpu")
    data = _bars(n=10)
    assert ev["logits"].shape == (10, 2) and torch.equal(ev["labels"], data.labels)
    model.eval()
    with torch.no_grad():
        logits = model(data.images)
    torch.testing.assert_close(ev["logits"], logits)
    assert ev["accuracy"] == pytest.approx((logits.argmax(1) == data.labels).float().mean().item())
    assert ev["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.labels).item())


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(BiocnnError, match="not a readable biocnn checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(BiocnnError, match="not a biocnn checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    model = create_model("invariant", num_classes=2, widths=(4, 8))
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_kwargs"]["widths"] = [4, 16]  # a checkpoint whose weights fit another model
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(BiocnnError, match="weights do not fit") as err:
        load_checkpoint(tmp_path / "other.pt")
    assert "saved by biocnn" not in str(err.value)  # same version: no hint
    ckpt["biocnn_version"] = "0.0.1"  # an older layout: say which version wrote it
    torch.save(ckpt, tmp_path / "older.pt")
    with pytest.raises(BiocnnError, match="saved by biocnn 0.0.1, this is"):
        load_checkpoint(tmp_path / "older.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BiocnnError):
        load_checkpoint(truncated)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_tta_on_an_exact_d4_model_changes_nothing() -> None:
    """Test-time averaging over the 8 rotations/flips is a no-op for an exactly D4-invariant
    model (in eval mode, with trained-looking BatchNorm statistics)."""
    torch.manual_seed(0)
    model = create_model("invariant_d4", num_classes=3, widths=(4, 8))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 1, 20, 20)
    plain = predict_logits(model, x, device="cpu").softmax(1)
    tta = predict_logits(model, x, device="cpu", tta=True).exp()
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-4)
    assert plain.std(0).max() > 1e-4  # not a constant function of the input


def test_channels_last_with_5d_group_weights() -> None:
    """channels_last converts the 4-D weights and leaves the D4 models' 5-D ones alone."""
    torch.manual_seed(0)
    model = create_model("invariant_d4", num_classes=2, widths=(4, 8))
    cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False, channels_last=True,
                      bn_recalibrate=0)
    result = fit(model, _bars(n=32), None, cfg)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])


@pytest.mark.parametrize("name", ["invariant", "lenet_fc"])
def test_channels_last_reaches_one_channel_convolutions(name: str) -> None:
    """A one-channel input's conv weight gets channels-last strides (``contiguous`` keeps
    the NCHW ones, as both layouts match), so the first conv writes channels-last and the
    pooling and norms after it run their fast kernels; the model still trains."""
    torch.manual_seed(0)
    kw = {"img_size": 16} if name == "lenet_fc" else {"widths": (4, 8)}
    model = create_model(name, num_classes=2, in_chans=1, **kw)
    cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", progress=False, channels_last=True,
                      bn_recalibrate=0)
    assert math.isfinite(fit(model, _bars(n=32, size=16), None, cfg).history[0]["train_loss"])
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.shape[1] == 1 and first.stride()[1] == 1
    y = torch.nn.functional.conv2d(torch.randn(2, 1, 16, 16), first)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


_FAULTS = """
import resource, torch
from biocnn.runtime import reuse_freed_memory
applied = reuse_freed_memory()
fresh = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 18)  # 64 MiB, above glibc's mmap threshold
    fresh.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(f < 100 for f in fresh[-5:]))  # allocations that touched no new pages
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_training_processes_reuse_freed_memory() -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["True", "5"], out
    off = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         check=True, env={**env, "BIOCNN_MALLOC": "system"}).stdout.split()
    assert off[0] == "False" and int(off[1]) < 5, off


def test_freed_memory_reuse_nests_and_is_undone() -> None:
    from biocnn import runtime

    with runtime.freed_memory_reused() as outer:
        with runtime.freed_memory_reused() as inner:
            assert runtime._REUSE_DEPTH == int(outer) and inner
        assert runtime._REUSE_DEPTH == int(outer)  # the inner block did not undo the outer
    assert runtime._REUSE_DEPTH == 0
