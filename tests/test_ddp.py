"""Distributed training: two CPU processes (gloo) against one process with the same global batch.

The ranks are started with ``torch.multiprocessing`` and the variables ``torchrun`` sets
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Each rank
trains two tiny models with :func:`biocnn.engine.fit`:

* one without normalisation, compared tightly with a single-process run of batch ``2B``
  (DDP averages the two ranks' mean gradients, which is the mean over the global batch);
* one with BatchNorm, whose full state (weights *and* running statistics) must end the
  same on both ranks, since every rank evaluates and may stop early on its own copy;
* one on a lazy MRC dataset with class-balanced sampling, whose batches must be disjoint
  slices of the global batches one process with batch ``2B`` reads.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from biocnn.config import TrainConfig
from biocnn.data import PreprocessConfig, TensorData, build_dataset
from biocnn.engine import fit
from biocnn.io.mrc import write_mrc
from biocnn.models.registry import create_model

_RANK_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
_BATCH = 6  # per rank
_N = 40  # 40 = 3 global batches of 12 + one of 4: the last step has 2 images per rank


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> TensorData:
    """``(40, 1, 16, 16)`` images whose class (of 3) sets the brightness of a blob."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.arange(_N) % 3
    images = 0.5 * torch.randn(_N, 1, 16, 16, generator=gen)
    images[:, :, 6:10, 6:10] += labels.view(-1, 1, 1, 1).float()
    return TensorData(images, labels)


def _model(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("invariant", num_classes=3, widths=(4, 8), norm=norm)


def _config(batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=batch_size, device="cpu", progress=False, seed=7)


def _train(norm: str, batch_size: int, out_dir: Path | None = None) -> dict:
    model = _model(norm)
    result = fit(model, _data(), None, _config(batch_size), out_dir=out_dir)
    return {"state": model.state_dict(), "history": result.history}


class _Recorder:
    """A dataset that records the index lists it is asked for."""

    def __init__(self, data) -> None:  # noqa: ANN001
        self.data, self.labels, self.seen = data, data.labels, []

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices):  # noqa: ANN001, ANN201
        self.seen.append(np.asarray(indices).tolist())
        return self.data.batch(indices)


def _lazy_folder(root: Path) -> Path:
    """Two imbalanced classes (22 and 8 images of 16 px) as MRC stacks."""
    rng = np.random.default_rng(5)
    for name, n, level in (("a", 22, 0.0), ("b", 8, 2.0)):
        img = rng.standard_normal((n, 16, 16)).astype(np.float32)
        img[:, 6:10, 6:10] += level
        write_mrc(root / name / "s.mrcs", img, apix=2.0, is_stack=True)
    return root


def _train_lazy(folder: Path, batch_size: int) -> dict:
    ds = build_dataset(folder, preprocess=PreprocessConfig())
    data = _Recorder(ds)
    model = _model("none")
    cfg = TrainConfig(epochs=2, batch_size=batch_size, device="cpu", progress=False, seed=3,
                      balance_classes=True, bn_recalibrate=0)
    result = fit(model, data, None, cfg, standardize=ds.preprocess.standardizer())
    return {"state": model.state_dict(), "seen": data.seen, "steps": len(result.history) and
            len(data.seen)}


def _metrics(history: list[dict]) -> list[tuple[float, ...]]:
    """The rank-independent columns of a fit history (timings excluded)."""
    return [(row["epoch"], row["train_loss"], row["train_acc"], row["lr"]) for row in history]


def _rank(rank: int, world: int, port: int, tmp: str) -> None:
    """One DDP rank: train both models, save their states for the test to compare."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    threads = torch.get_num_threads()
    out_dir = Path(tmp) / f"out{rank}"
    out_dir.mkdir()
    try:
        runs = {"none": _train("none", _BATCH, out_dir), "batch": _train("batch", _BATCH),
                "threads": [threads, torch.get_num_threads()],
                "lazy": _train_lazy(Path(tmp) / "lazy", _BATCH)}
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(runs, Path(tmp) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Run two ranks once for all tests; returns the folder and each rank's saved runs."""
    tmp = tmp_path_factory.mktemp("ddp")
    _lazy_folder(tmp / "lazy")
    mp.start_processes(_rank, args=(2, _free_port(), str(tmp)), nprocs=2, start_method="spawn")
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _RANK_VARS:
        monkeypatch.delenv(var, raising=False)


def test_ranks_end_with_identical_state(ddp_runs: tuple[Path, list[dict]]) -> None:
    _, (r0, r1) = ddp_runs
    initial = _model("batch").state_dict()
    for norm in ("none", "batch"):
        s0, s1 = r0[norm]["state"], r1[norm]["state"]
        assert s0.keys() == s1.keys()
        for key in s0:
            assert torch.equal(s0[key], s1[key]), f"{norm}: {key} differs between ranks"
        assert _metrics(r0[norm]["history"]) == _metrics(r1[norm]["history"])
    # training moved the BatchNorm statistics and the weights away from their initial values
    assert not torch.equal(r0["batch"]["state"]["features.0.1.running_mean"],
                           initial["features.0.1.running_mean"])
    assert not torch.equal(r0["batch"]["state"]["features.0.0.weight"],
                           initial["features.0.0.weight"])


def test_two_ranks_match_one_process_with_double_batch(
    ddp_runs: tuple[Path, list[dict]], single_process: None
) -> None:
    _, (r0, _) = ddp_runs
    ref = _train("none", 2 * _BATCH)
    initial = _model("none").state_dict()
    for key, value in ref["state"].items():
        assert not torch.allclose(value, initial[key]), f"{key} did not train"
        torch.testing.assert_close(r0["none"]["state"][key], value, rtol=1e-4, atol=1e-5)
    for ddp_row, ref_row in zip(r0["none"]["history"], ref["history"], strict=True):
        assert ddp_row["train_loss"] == pytest.approx(ref_row["train_loss"], rel=1e-5)
        assert ddp_row["train_acc"] == pytest.approx(ref_row["train_acc"])
        assert ddp_row["lr"] == pytest.approx(ref_row["lr"])


def test_ranks_share_the_cores(ddp_runs: tuple[Path, list[dict]]) -> None:
    """Without OMP_NUM_THREADS, each of the 2 local ranks keeps half of torch's threads."""
    for run in ddp_runs[1]:
        before, after = run["threads"]
        assert after == (before if "OMP_NUM_THREADS" in os.environ else max(1, before // 2))


def test_only_rank_zero_writes(ddp_runs: tuple[Path, list[dict]]) -> None:
    tmp, _ = ddp_runs
    assert {p.name for p in (tmp / "out0").iterdir()} == {"best.pt", "last.pt", "metrics.jsonl"}
    assert list((tmp / "out1").iterdir()) == []
    assert len((tmp / "out0" / "metrics.jsonl").read_text().splitlines()) == 2


def test_lazy_balanced_ranks_read_disjoint_slices_of_one_process_batches(
    ddp_runs: tuple[Path, list[dict]], single_process: None
) -> None:
    """Class-balanced sampling of a lazy MRC dataset under DDP: each rank reads its own half
    of every global batch a single process with the double batch reads, in as many steps
    as the in-memory path takes, and the weights end the same."""
    tmp, (r0, r1) = ddp_runs
    ref = _train_lazy(tmp / "lazy", 2 * _BATCH)
    s0, s1 = r0["lazy"]["seen"], r1["lazy"]["seen"]
    assert len(s0) == len(s1) == len(ref["seen"]) == 2 * 3  # 2 epochs of ceil(30 / 2 / 6)
    for a, b, whole in zip(s0, s1, ref["seen"], strict=True):
        assert a + b == whole and len(a) == len(b)
    counts = np.bincount(np.asarray([i for batch in ref["seen"] for i in batch]) >= 22)
    assert counts.min() > 0.3 * counts.sum()  # class b (8 of 30 images) drawn about half the time
    for key, value in ref["state"].items():
        torch.testing.assert_close(r0["lazy"]["state"][key], value, rtol=1e-4, atol=1e-5)
