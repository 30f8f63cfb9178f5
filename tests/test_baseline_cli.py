"""``biocnn baseline mnist`` end to end on a small subset of the bundled real MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biocnn.checkpoint import load_checkpoint
from biocnn.cli import app
from mnist_baseline.experiment import INVARIANT_KWARGS, random_placement_augment
from mnist_baseline.idx import write_idx

runner = CliRunner()


@pytest.mark.slow
def test_baseline_end_to_end_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "baseline", "mnist", "--shift", "corners", "--limit", "1200", "--epochs", "1",
        "--all-shift-limit", "20", "--models", "lenet_fc,invariant", "--out", str(out),
        "--json", "--no-progress", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{"):])
    assert doc == json.loads((out / "results.json").read_text())
    assert (doc["dataset"], doc["shift"], doc["canvas"]) == ("mnist", "corners", 28)
    assert set(doc["models"]) == {"lenet_fc", "invariant"}
    for name, row in doc["models"].items():
        assert set(row["corners"]) == {"top_left", "top_right", "bottom_left", "bottom_right"}
        for key in ("centered", "worst_corner", "all_shift_mean", "all_shift_worst_case", "consistency"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["worst_corner"] == min(row["corners"].values())
        assert row["epochs"] == 1 and row["train_seconds"] > 0 and isinstance(row["augment"], bool)
    inv = doc["models"]["invariant"]
    # exact invariance: every corner and every placement gives the centred answer
    assert all(abs(v - inv["centered"]) < 1e-9 for v in inv["corners"].values())
    assert inv["consistency"] == 1.0 and inv["circular_consistency"] == 1.0
    # the options the row was built with, and the checkpoint rebuilds the same model
    kwargs = json.loads(json.dumps(INVARIANT_KWARGS))  # tuples as JSON lists
    assert inv["model_kwargs"] == kwargs and kwargs["max_filter"] is True
    assert load_checkpoint(out / "invariant.pt")[0].spec["kwargs"].items() >= kwargs.items()
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.png", "run.json",
                                                "lenet_fc.pt", "invariant.pt"}
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["limit"] == 1200 and "biocnn_version" in run


def _write_tiny_mnist(folder: Path, n: int = 60) -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(1, 255, (n, 12, 8), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)


def test_baseline_with_data_dir_and_config(tmp_path: Path) -> None:
    _write_tiny_mnist(tmp_path / "idx")
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["lenet_fc"]\nepochs = 1\nall_shift_limit = 5\ntransform = "both"\n'
                   'rotation_limit = 8\nrotation_step = 90\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["baseline", "mnist", "--data-dir", str(tmp_path / "idx"),
                                 "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["models"]) == ["lenet_fc"] and doc["train_images"] == 60
    row = doc["models"]["lenet_fc"]  # both views: shift keys at top level, rotation nested
    assert "worst_corner" in row and row["rotation"]["angles"] == [0.0, 90.0, 180.0]
    assert row["rotation"]["digits"] == 8 and doc["transform"] == "both"
    assert {"report.png", "rotation.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("problem, args, message", [
    ("unknown model", ["--models", "lenet_fc,resnet9000"], "unknown model 'resnet9000'"),
    ("missing data", ["--data-dir", "{tmp}/nowhere"], "nowhere"),
    ("corrupt data", ["--data-dir", "{tmp}/bad"], "t10k-labels"),
    ("bad shift", ["--shift", "diagonal"], "unknown --shift"),
    ("bad transform", ["--transform", "shear"], "unknown --transform"),
    ("bad rotation step", ["--transform", "rotate", "--rotation-step", "0"], "rotation_step"),
])
def test_baseline_bad_input_is_one_clean_line(tmp_path: Path, problem: str, args: list[str],
                                              message: str) -> None:
    bad = tmp_path / "bad"
    _write_tiny_mnist(bad)
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["baseline", "mnist", "--out", str(out), "--no-progress", *args])
    assert result.exit_code == 1, problem
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_baseline_rotation_view_end_to_end(tmp_path: Path) -> None:
    _write_tiny_mnist(tmp_path / "idx")
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "baseline", "mnist", "--data-dir", str(tmp_path / "idx"), "--transform", "rotate",
        "--models", "lenet_fc,invariant_d4", "--epochs", "1", "--rotation-limit", "12",
        "--rotation-step", "45", "--out", str(out), "--no-progress", "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc == json.loads(result.stdout[result.stdout.index("{"):])
    assert doc["transform"] == "rotate" and doc["rotation_digits"] == 12
    for name, row in doc["models"].items():
        rot = row["rotation"]
        assert "corners" not in row and rot["digits"] == 12
        errors = round((1 - row["centered"]) * doc["test_images"])
        assert sum(c[2] for c in row["top_confusions"]) <= errors
        assert all(t != q and n > 0 for t, q, n in row["top_confusions"])
        assert list(rot["d4"]) == ["identity", "rot90", "rot180", "rot270", "flip", "flip_rot90",
                                   "flip_rot180", "flip_rot270"]
        assert rot["d4"]["identity"] == row["centered"], name
        assert rot["d4_worst_case"] <= min(rot["d4"].values()) <= rot["d4_mean"] <= max(rot["d4"].values())
        assert rot["angles"] == [0.0, 45.0, 90.0, 135.0, 180.0] and len(rot["angle_accuracy"]) == 5
        assert rot["angle_worst_case"] <= min(rot["angle_accuracy"]) and 0 <= rot["consistency"] <= 1
    d4 = doc["models"]["invariant_d4"]["rotation"]
    # exact D4 and shift invariance: every element and every right angle give the same answers
    assert len(set(d4["d4"].values())) == 1 and d4["d4_worst_case"] == d4["d4"]["identity"]
    assert d4["angle_accuracy"][0] == d4["angle_accuracy"][2] == d4["angle_accuracy"][4]
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "rotation.png", "run.json", "invariant_d4.pt"} <= names
    assert "report.png" not in names
    assert "accuracy (%) vs angle" in result.stderr and "tested rotated" in result.stderr


def test_baseline_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["baseline", "mnist", "--out", str(blocker / "run"), "--no-progress"])
    assert result.exit_code == 1 and "cannot write output directory" in result.stderr


def test_random_placement_augment_keeps_digits_whole() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10:18, 12:16] = torch.rand(64, 8, 4) + 0.1
    out = random_placement_augment(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-4)  # nothing clipped
    moved = (out != x).flatten(1).any(1).float().mean()
    assert moved > 0.9
    nz = out[:, 0] != 0
    assert nz.any(2).sum(1).eq(8).all() and nz.any(1).sum(1).eq(4).all()  # box size kept
