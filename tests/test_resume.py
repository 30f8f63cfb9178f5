"""Interruption and resume: a run stopped by a signal (mid-epoch or between epochs) or
killed after a checkpoint continues from ``last.pt`` to the same final weights, bit for bit
on the CPU; one run per output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biocnn import BiocnnError, create_model
from biocnn.atomic import RunLock
from biocnn.augment import Augment
from biocnn.checkpoint import read_checkpoint
from biocnn.config import TrainConfig
from biocnn.data import TensorData
from biocnn.engine import TrainingInterrupted, fit
from biocnn.io.mrc import write_mrc

_CFG = TrainConfig(epochs=3, batch_size=8, device="cpu", progress=False, seed=5, bn_recalibrate=16)


def _data(n: int = 44) -> TensorData:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 12, 12, generator=g)
    x[y == 1, :, 4:8, 4:8] += 2.0
    return TensorData(x, y)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("invariant", num_classes=2, widths=(4, 8), dropout=0.2)


class _Stopper:
    """Augmentation that sends this process ``signum`` (or raises, like a crash) at call ``at``."""

    def __init__(self, at: int, signum: int | None) -> None:
        self.calls, self.at, self.signum = 0, at, signum
        self.augment = Augment(max_shift=2.0, rotate=True, flip=True)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            if self.signum is None:
                raise RuntimeError("simulated crash")
            os.kill(os.getpid(), self.signum)
        return self.augment(x, g)


def _reference(tmp: Path) -> dict[str, torch.Tensor]:
    model = _model()
    fit(model, _data(), _data(12), _CFG, augment=_Stopper(0, None), out_dir=tmp)
    return model.state_dict()


def _resume(out: Path) -> tuple[dict[str, torch.Tensor], list]:
    ckpt = read_checkpoint(out / "last.pt")
    model = _model()
    model.load_state_dict(ckpt["state_dict"])
    result = fit(model, _data(), _data(12), _CFG, augment=_Stopper(0, None), out_dir=out,
                 resume=ckpt["train_state"])
    return model.state_dict(), result.history


@pytest.mark.parametrize(("at", "signum", "epoch", "step"), [
    (9, signal.SIGINT, 2, 3),  # mid-epoch: 6 steps per epoch
    (6, signal.SIGTERM, 1, 6),  # the last step of epoch 1: between epochs
])
def test_signal_then_resume_gives_the_uninterrupted_weights(
    tmp_path: Path, at: int, signum: int, epoch: int, step: int
) -> None:
    ref = _reference(tmp_path / "ref")
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stop:
        fit(_model(), _data(), _data(12), _CFG, augment=_Stopper(at, signum), out_dir=out)
    assert (stop.value.epoch, stop.value.step, stop.value.signum) == (epoch, step, signum)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    state, history = _resume(out)
    for key, value in ref.items():
        assert torch.equal(state[key], value), key
    assert [r["epoch"] for r in history] == [1, 2, 3]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and [r[:60] for r in rows] == [r[:60] for r in ref_rows]


def test_crash_after_a_checkpoint_resumes_from_it(tmp_path: Path) -> None:
    """Like kill -9: the last completed epoch's last.pt continues to the same weights."""
    ref = _reference(tmp_path / "ref")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), _data(), _data(12), _CFG, augment=_Stopper(15, None), out_dir=out)
    assert read_checkpoint(out / "last.pt")["train_state"]["epoch"] == 3  # epochs 1-2 done
    state, _ = _resume(out)
    for key, value in ref.items():
        assert torch.equal(state[key], value), key


def test_one_run_per_folder_and_stale_locks(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        with pytest.raises(BiocnnError, match=r"another biocnn run \(pid \d+\) is writing"):
            RunLock(tmp_path / "run").__enter__()
    assert (tmp_path / "run" / RunLock.NAME).read_text() == ""  # released: kept, emptied
    # a process that died holding the lock: the OS released it, its pid is still written
    (tmp_path / "run" / RunLock.NAME).write_text("999999")
    with pytest.warns(UserWarning, match="pid 999999"), RunLock(tmp_path / "run"):
        pass


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    c = np.arange(16) - 8
    r = np.hypot(c[:, None], c[None, :])
    for name, mask in (("small", r < 3), ("large", r < 6)):
        data = mask + 0.3 * rng.standard_normal((40, 16, 16))
        write_mrc(root / name / "s.mrcs", data.astype(np.float32), apix=1.0, is_stack=True)
    return root


@pytest.mark.slow
def test_cli_sigterm_then_resume(tmp_path: Path) -> None:
    """``biocnn train`` stopped by SIGTERM leaves the run at --out, marked interrupted, with
    the resume command printed; a new run on that folder is refused; ``--resume`` finishes it."""
    import json

    data, out = _folder(tmp_path / "maps"), tmp_path / "run"
    cmd = [sys.executable, "-m", "biocnn", "train", str(data), "--out", str(out), "--epochs", "30",
           "--batch-size", "4", "--patience", "0", "--device", "cpu", "--no-progress",
           "--model", "invariant", "--model-kwargs", '{"widths": [4, 8]}']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # during epoch 2 at the latest
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"biocnn train --resume {out}" in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "exists and is not empty" in again.stderr
    resumed = subprocess.run([sys.executable, "-m", "biocnn", "train", "--resume", str(out),
                              "--no-progress"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 30


def test_resume_keeps_the_model_and_augmentation_of_an_older_run(tmp_path: Path) -> None:
    """A run saved before ``interp`` and the canonical default resumes as it was built:
    bilinear augmentation, no ShiftCanonical."""
    from biocnn.checkpoint import save_checkpoint
    from biocnn.config import CryoTrainConfig
    from biocnn.tasks.train import _resume_config

    run = tmp_path / "old"
    run.mkdir()
    model = create_model("invariant_m", num_classes=2, widths=[4, 4, 4, 4])
    config = {"data": "maps", "model": "invariant_m", "model_kwargs": {"widths": [4, 4, 4, 4]}}
    save_checkpoint(run / "last.pt", model, {"config": config, "train_state": {"epoch": 1}})
    cfg, _ = _resume_config(CryoTrainConfig(resume=str(run)))
    assert (cfg.interp, cfg.fill) == ("bilinear", "zeros")
    assert cfg.model_kwargs == {"widths": [4, 4, 4, 4]}
    # saved after ``interp`` but before ``fill``: band-limited shifts then wrapped around
    save_checkpoint(run / "last.pt", model, {"config": {**config, "interp": "fourier"},
                                             "train_state": {"epoch": 1}})
    cfg, _ = _resume_config(CryoTrainConfig(resume=str(run)))
    assert (cfg.interp, cfg.fill) == ("fourier", "circular")
