"""``biocnn train`` → ``predict`` → ``evaluate`` end to end on tiny synthetic cryo-EM images,
plus every bad input: exit code 1, one line on stderr, no traceback, nothing left behind."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from typer.testing import CliRunner

from biocnn.checkpoint import save_checkpoint
from biocnn.cli import app
from biocnn.config import CryoTrainConfig, load_toml, resolve, to_plain
from biocnn.io.mrc import write_mrc
from biocnn.io.star import format_image_name, read_star, write_star
from biocnn.models import create_model

runner = CliRunner()
CLASSES = ("bar", "disc", "ring")
SIZE = 24
TINY = ["--model", "invariant", "--model-kwargs", '{"widths": [8, 16]}', "--device", "cpu",
        "--no-progress"]


def shapes(kind: str, n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """``(n, size, size)`` float32 noisy bars, discs or rings, each shifted by up to 3 px."""
    c = np.arange(size) - size // 2
    out = []
    for dy, dx in rng.integers(-3, 4, (n, 2)):
        y, x = c[:, None] - dy, c[None, :] - dx
        r = np.hypot(y, x)
        if kind == "disc":
            img = r < size / 5
        elif kind == "ring":
            img = (r > size / 5) & (r < size / 3.2)
        else:
            img = (abs(y) < 2) & (abs(x) < size / 3)
        out.append(img + 0.3 * rng.standard_normal((size, size)))
    return np.stack(out).astype(np.float32)


def make_maps(root: Path, n: int = 16, seed: int = 0) -> Path:
    """``root/<class>/<class>.mrcs`` for the 3 classes, ``n`` images each, 2 Å/px."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        write_mrc(root / kind / f"{kind}.mrcs", shapes(kind, n, rng), apix=2.0, is_stack=True)
    return root


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *names: str) -> str:
    """Exit 1, exactly one line on stderr naming ``names``, no traceback; returns the line."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny training run (2 epochs) shared by the tests: config file + CLI overrides."""
    root = tmp_path_factory.mktemp("cryo")
    maps = make_maps(root / "maps")
    config = root / "train.toml"
    config.write_text('epochs = 5\nbatch_size = 16\nlr = 0.01\nval_fraction = 0.25\n'
                      'model = "lenet_fc"\n')
    out = root / "run"
    result = invoke("train", maps, "--config", config, "--epochs", 2, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    log = root / "train.log"
    log.write_text(result.stdout)
    return {"maps": maps, "out": out, "ckpt": out / "best.pt", "log": log}


def test_train_writes_a_complete_run(run: dict[str, Path]) -> None:
    out = run["out"]
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "best.pt", "last.pt", "metrics.jsonl", "curves.png", "confusion.png", "summary.json",
        "config.toml", "run.json",
    }
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["class_names"] == list(CLASSES) and ckpt["model_name"] == "invariant"
    assert ckpt["preprocess"]["box"] == SIZE and ckpt["preprocess"]["apix"] == 2.0
    assert ckpt["views"] == {"slice_axis": "z", "slices": "central", "project": False,
                             "as_volume": None}
    # config file values survive unless a flag overrides them
    cfg = ckpt["config"]
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["model"]) == (2, 16, 0.01, "invariant")
    assert cfg["model_kwargs"] == {"widths": [8, 16]} and cfg["max_shift"] == round(0.08 * SIZE, 1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_acc" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] + summary["val_images"] == 3 * 16 and summary["val_images"] == 12
    assert summary["best_epoch"] in (1, 2) and summary["images_per_s"] > 0
    val = summary["validation"]
    assert sum(map(sum, val["confusion"])) == 12 and set(val["per_class"]) == set(CLASSES)
    assert val["accuracy"] == pytest.approx(summary["best_val_acc"])
    log = run["log"].read_text()
    assert "validation accuracy" in log and "precision" in log and "images/s" in log
    # the written config.toml reproduces the resolved config
    again = resolve(CryoTrainConfig(), out / "config.toml", {"out": str(out)})
    assert to_plain(again) == cfg
    assert json.loads((out / "run.json").read_text())["config"] == cfg
    assert load_toml(out / "config.toml")["box"] == SIZE


def test_predict_single_image_json(run: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "one.mrc"
    write_mrc(image, shapes("disc", 1, np.random.default_rng(5))[0], apix=2.0)
    result = invoke("predict", image, "--model", run["ckpt"], "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["images"] == 1 and doc["class_names"] == list(CLASSES)
    (entry,) = doc["inputs"]
    probs = entry["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert entry["predicted"] == max(probs, key=probs.get) and entry["layout"] == "image"


def test_predict_stack_csv_star_select_cam(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("biocnn.io.writers.CSV_ROWS", 4)  # stream CSV rows in chunks
    monkeypatch.setattr("biocnn.tasks.predict.MEMORY_BUDGET", 4 * SIZE * SIZE * 4)  # 4-image blocks
    stack = tmp_path / "mixed.mrcs"
    rng = np.random.default_rng(7)
    images = np.concatenate([shapes(k, 5, rng) for k in CLASSES])
    write_mrc(stack, images, apix=2.0, is_stack=True)
    out = tmp_path / "out"
    result = invoke("predict", stack, "--model", run["ckpt"], "--csv", out / "p.csv",
                    "--star", out / "p.star", "--cam", out / "cam.png", "--cam-count", 4,
                    "--relion-project", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{stack}: stack of 15 images (.mrcs name)" in " ".join(result.stdout.split())
    assert "300 kV" in result.stderr  # optics defaults are announced
    table = pd.read_csv(out / "p.csv")
    assert list(table.columns) == ["index", "image", "predicted", "p_bar", "p_disc", "p_ring"]
    assert table["index"].tolist() == list(range(15))
    assert table["image"][3] == format_image_name(3, stack)
    probs = table[["p_bar", "p_disc", "p_ring"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (table["predicted"] == np.asarray(CLASSES)[probs.argmax(1)]).all()
    assert (out / "cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # STAR: RELION 3.1+ with complete optics; names relative to the RELION project folder
    blocks = starfile.read(out / "p.star", always_dict=True)
    optics = blocks["optics"].iloc[0]
    assert (optics["rlnImagePixelSize"], optics["rlnImageSize"], optics["rlnImageDimensionality"],
            optics["rlnVoltage"], optics["rlnSphericalAberration"],
            optics["rlnAmplitudeContrast"]) == (2.0, SIZE, 2, 300.0, 2.7, 0.1)
    parts = blocks["particles"]
    assert parts["rlnImageName"].tolist() == [format_image_name(i, "mixed.mrcs") for i in range(15)]
    assert "rlnClassNumber" not in parts.columns  # predictions never take RELION labels
    assert (parts["biocnnClassNumber"] == probs.argmax(1) + 1).all()
    assert (parts["biocnnClassName"] == table["predicted"]).all()
    np.testing.assert_allclose(parts["biocnnProbability"], probs.max(1), atol=1e-5)
    np.testing.assert_allclose(parts[["biocnnProbability_bar", "biocnnProbability_disc",
                                      "biocnnProbability_ring"]], probs, atol=1e-5)
    # --select (by 1-based number) writes the original pixels of that class's images + STAR
    top = int(np.bincount(probs.argmax(1)).argmax())
    result = invoke("predict", stack, "--model", run["ckpt"], "--select", top + 1,
                    "--out-stack", out / "sel.mrcs", "--no-progress")
    assert result.exit_code == 0, result.output
    chosen = np.flatnonzero(probs.argmax(1) == top)
    with mrcfile.open(out / "sel.mrcs") as mrc:
        assert mrc.is_image_stack() and float(mrc.voxel_size.x) == 2.0
        np.testing.assert_array_equal(mrc.data, images[chosen])
        assert mrc.header.dmax == pytest.approx(images[chosen].max())
        assert float(mrc.header.rms) == pytest.approx(images[chosen].std(), rel=1e-4)
    sel = starfile.read(out / "sel.star", always_dict=True)["particles"]
    paths, sections = read_star(out / "sel.star").image_refs()  # resolvable from the cwd
    assert {p.resolve() for p in paths} == {stack.resolve()} and sections.tolist() == chosen.tolist()
    assert (sel["biocnnClassNumber"] == top + 1).all()
    # an existing output is refused before any work unless --overwrite is given
    again = invoke("predict", stack, "--model", run["ckpt"], "--select", top + 1,
                   "--out-stack", out / "sel.mrcs", "--no-progress")
    assert_clean_error(again, "--out-stack", "--overwrite")
    again = invoke("predict", stack, "--model", run["ckpt"], "--select", top + 1,
                   "--out-stack", out / "sel.mrcs", "--overwrite", "--no-progress")
    assert again.exit_code == 0, again.output
    # an empty selection is a one-line warning and writes nothing
    result = invoke("predict", stack, "--model", run["ckpt"], "--select", CLASSES[top],
                    "--min-probability", 1.01, "--out-stack", out / "none.mrcs", "--no-progress")
    assert result.exit_code == 0 and not (out / "none.mrcs").exists()
    assert not (out / "none.star").exists()
    assert any(line.startswith("warning: no image predicted") for line in result.stderr.splitlines())


def test_predict_refuses_to_replace_inputs(run: dict[str, Path], tmp_path: Path) -> None:
    stack = tmp_path / "in.mrcs"
    write_mrc(stack, shapes("disc", 3, np.random.default_rng(2)), apix=2.0, is_stack=True)
    before = stack.read_bytes(), run["ckpt"].read_bytes()
    assert_clean_error(invoke("predict", stack, "--model", run["ckpt"], "--select", "disc",
                              "--out-stack", stack, "--overwrite"), "--out-stack", "inputs")
    assert_clean_error(invoke("predict", stack, "--model", run["ckpt"], "--csv", run["ckpt"],
                              "--overwrite"), "--csv", "inputs")
    star = write_star(tmp_path / "p.star", pd.DataFrame({
        "rlnImageName": [format_image_name(i, "in.mrcs") for i in range(3)]}), apix=2.0,
        image_size=SIZE)
    assert_clean_error(invoke("predict", star, "--model", run["ckpt"], "--csv", stack,
                              "--overwrite"), "--csv", "in.mrcs")  # a stack the STAR names
    assert (stack.read_bytes(), run["ckpt"].read_bytes()) == before


def test_predict_volume_slices_aggregate(run: dict[str, Path], tmp_path: Path) -> None:
    volume = tmp_path / "vol.map"
    write_mrc(volume, shapes("disc", SIZE, np.random.default_rng(9)), apix=2.0)
    csv = tmp_path / "slices.csv"
    result = invoke("predict", volume, "--model", run["ckpt"], "--slices", "all", "--csv", csv,
                    "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["inputs"]
    table = pd.read_csv(csv)
    assert entry["layout"] == "volume" and entry["images"] == SIZE == len(table)
    assert table["image"][5] == f"{volume}:z=5"
    mean = table[["p_bar", "p_disc", "p_ring"]].mean().to_numpy()
    np.testing.assert_allclose(list(entry["probabilities"].values()), mean, atol=1e-5)
    assert entry["predicted"] == CLASSES[int(mean.argmax())]
    assert sum(entry["counts"].values()) == SIZE


def test_predict_globs_and_several_files(run: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        write_mrc(tmp_path / f"s{i}.mrcs", shapes("bar", 2, rng), apix=2.0, is_stack=True)
    csv = tmp_path / "all.csv"
    result = invoke("predict", str(tmp_path / "s*.mrcs"), tmp_path / "s0.mrcs", "--model",
                    run["ckpt"], "--csv", csv, "--no-progress")
    assert result.exit_code == 0, result.output
    names = pd.read_csv(csv)["image"].tolist()
    assert len(names) == 6 and names[0].endswith("@" + str(tmp_path / "s0.mrcs"))


def test_predict_memory_stays_flat(run: dict[str, Path], tmp_path: Path) -> None:
    """Python/numpy allocations stay at a few batches, far below the stack size."""
    stack = tmp_path / "big.mrcs"
    data = np.random.default_rng(0).standard_normal((1000, 64, 64)).astype(np.float32)
    write_mrc(stack, data, apix=2.0, is_stack=True)
    nbytes = data.nbytes
    del data
    tracemalloc.start()
    try:
        result = invoke("predict", stack, "--model", run["ckpt"], "--batch-size", 128,
                        "--no-progress")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    batch_bytes = 128 * 64 * 64 * 4
    assert peak < min(3 * batch_bytes, nbytes / 2), (peak, nbytes)  # never the whole stack


def test_evaluate_report(run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = invoke("evaluate", run["maps"], "--model", run["ckpt"], "--out", out,
                    "--shifts", "0,2,5", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "evaluation.json").read_text())
    assert doc["images"] == 48 and np.asarray(doc["confusion"]).sum() == 48
    assert set(doc["per_class"]) == set(CLASSES)
    shift = doc["shift_robustness"]
    assert shift["shifts_px"] == [0.0, 2.0, 5.0] and len(shift["accuracy"]) == 3
    assert shift["accuracy"][0] == pytest.approx(doc["accuracy"])
    assert shift["shifts_fraction_of_box"][2] == pytest.approx(5 / SIZE)
    assert 0 <= shift["worst_case"] <= min(shift["accuracy"]) and 0 <= shift["consistency"] <= 1
    assert {p.name for p in out.iterdir()} == {
        "evaluation.json", "confusion.png", "shift_accuracy.png", "rotation_accuracy.png", "run.json"}
    rot = doc["rotation_robustness"]
    assert rot["angles_deg"] == [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
    assert rot["accuracy"][0] == pytest.approx(doc["accuracy"]) and len(rot["accuracy"]) == 7
    assert rot["worst_case"] <= min(rot["accuracy"]) and 0 < rot["consistency"] <= 1
    assert 0 < shift["subpixel_consistency"] <= 1
    assert "rotation robustness" in result.stderr
    assert "shift robustness" in result.stderr and "precision" in result.stderr
    stderr = " ".join(result.stderr.split())
    assert f"{run['maps'] / 'bar' / 'bar.mrcs'}: stack of 16 images (.mrcs name)" in stderr


def test_unknown_pixel_size_is_a_warning(run: dict[str, Path], tmp_path: Path) -> None:
    stack = tmp_path / "nopix.mrcs"
    write_mrc(stack, shapes("disc", 2, np.random.default_rng(0)), apix=0.0, is_stack=True)
    result = invoke("predict", stack, "--model", run["ckpt"], "--no-progress")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning:") and "no pixel size" in line
               for line in result.stderr.splitlines())
    assert "error" not in result.stderr


# --- bad input ---------------------------------------------------------------------------


def _bad_mrc(kind: str, path: Path) -> Path:
    if kind == "not_mrc":
        path.write_text("this is not an MRC file\n" * 20)
    elif kind == "truncated":
        write_mrc(path, np.ones((4, SIZE, SIZE), np.float32), apix=2.0, is_stack=True)
        path.write_bytes(path.read_bytes()[:-500])
    elif kind == "complex":
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.ones((SIZE, SIZE), np.complex64))
    else:
        data = np.ones((3, SIZE, SIZE), np.float32)
        data[1, 4, 4] = np.nan if kind == "nan" else np.inf
        write_mrc(path, data, apix=2.0, is_stack=True)
    return path


@pytest.mark.parametrize("kind", ["not_mrc", "truncated", "complex", "nan", "inf"])
def test_predict_bad_mrc(run: dict[str, Path], tmp_path: Path, kind: str) -> None:
    bad = _bad_mrc(kind, tmp_path / "bad.mrcs")
    csv = tmp_path / "out.csv"
    result = invoke("predict", bad, "--model", run["ckpt"], "--csv", csv, "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output
    # tolerated header quirks (NaN statistics) may warn first; the error is one line
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error:") and "bad.mrcs" in errors[0]
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize("kind", ["not_mrc", "truncated", "complex", "nan"])
def test_train_bad_mrc_leaves_no_run(tmp_path: Path, kind: str) -> None:
    maps = make_maps(tmp_path / "maps", n=4)
    _bad_mrc(kind, maps / "disc" / "zbad.mrcs")
    result = invoke("train", maps, "--out", tmp_path / "run", "--epochs", 1, *TINY)
    assert result.exit_code == 1 and "Traceback" not in result.output
    # tolerated header quirks (NaN statistics) may warn first; the error is one line
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and errors[0].startswith("error:") and "zbad.mrcs" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


def test_train_empty_class_folder(tmp_path: Path) -> None:
    maps = make_maps(tmp_path / "maps", n=4)
    (maps / "empty").mkdir()
    result = invoke("train", maps, "--out", tmp_path / "run", *TINY)
    assert_clean_error(result, "empty")
    assert not (tmp_path / "run").exists()


def test_train_single_class(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    write_mrc(maps / "only" / "a.mrcs", shapes("disc", 4, np.random.default_rng(0)), apix=2.0,
              is_stack=True)
    result = invoke("train", maps, "--out", tmp_path / "run", *TINY)
    assert_clean_error(result, "at least 2 classes")
    assert not (tmp_path / "run").exists()


def _star(tmp_path: Path, with_label: bool = True, stack_exists: bool = True) -> Path:
    if stack_exists:
        write_mrc(tmp_path / "p.mrcs", shapes("disc", 4, np.random.default_rng(0)), apix=2.0,
                  is_stack=True)
    table = {"rlnImageName": [format_image_name(i, "p.mrcs") for i in range(4)]}
    if with_label:
        table["rlnClassNumber"] = [1, 2, 1, 2]
    return write_star(tmp_path / "p.star", pd.DataFrame(table), apix=2.0, image_size=SIZE)


def test_train_star_without_label_column(tmp_path: Path) -> None:
    star = _star(tmp_path, with_label=False)
    result = invoke("train", "--star", star, "--out", tmp_path / "run", *TINY)
    assert_clean_error(result, "p.star", "rlnClassNumber")
    assert not (tmp_path / "run").exists()


def test_star_with_missing_stack(run: dict[str, Path], tmp_path: Path) -> None:
    star = _star(tmp_path, stack_exists=False)
    result = invoke("train", "--star", star, "--out", tmp_path / "run", *TINY)
    assert_clean_error(result, "p.mrcs", "not found")
    result = invoke("predict", star, "--model", run["ckpt"], "--no-progress")
    assert_clean_error(result, "p.mrcs")
    assert not (tmp_path / "run").exists()


def test_train_star_end_to_end(tmp_path: Path) -> None:
    """A STAR file as training source (labels from a chosen column)."""
    rng = np.random.default_rng(4)
    write_mrc(tmp_path / "p.mrcs", np.concatenate([shapes("bar", 6, rng), shapes("ring", 6, rng)]),
              apix=2.0, is_stack=True)
    star = write_star(tmp_path / "p.star", pd.DataFrame({
        "rlnImageName": [format_image_name(i, "p.mrcs") for i in range(12)],
        "myClass": ["bar"] * 6 + ["ring"] * 6,
    }), apix=2.0, image_size=SIZE)
    out = tmp_path / "run"
    result = invoke("train", "--star", star, "--label-column", "myClass", "--epochs", 1,
                    "--no-augment", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["class_names"] == ["bar", "ring"] and ckpt["label_column"] == "myClass"
    assert ckpt["config"]["augment"] is False


def _checkpoint(kind: str, run: dict[str, Path], path: Path) -> Path:
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    elif kind == "other_model":
        ckpt = torch.load(run["ckpt"], weights_only=True)
        ckpt["model_name"] = "invariant_m"
        torch.save(ckpt, path)
    else:  # an MNIST-baseline-like checkpoint: no recorded views
        model = create_model("lenet_fc", num_classes=3, img_size=SIZE)
        save_checkpoint(path, model, {"class_names": list(CLASSES),
                                      "preprocess": {"scale": 1 / 255, "canvas": 28}})
    return path


@pytest.mark.parametrize("kind", ["corrupt", "other_model", "foreign"])
def test_bad_checkpoint(run: dict[str, Path], tmp_path: Path, kind: str) -> None:
    ckpt = _checkpoint(kind, run, tmp_path / "model.pt")
    result = invoke("predict", run["maps"] / "disc" / "disc.mrcs", "--model", ckpt,
                    "--csv", tmp_path / "p.csv", "--no-progress")
    assert_clean_error(result, "model.pt")
    result = invoke("evaluate", run["maps"], "--model", ckpt, "--out", tmp_path / "eval",
                    "--no-progress")
    assert_clean_error(result, "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_unwritable_outputs(run: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    stack = run["maps"] / "disc" / "disc.mrcs"
    for option in ("--csv", "--star", "--cam"):
        result = invoke("predict", stack, "--model", run["ckpt"], option, blocker / "x" / "o.out",
                        "--no-progress")
        assert_clean_error(result, option, "file.txt")
    result = invoke("predict", stack, "--model", run["ckpt"], "--select", "disc",
                    "--out-stack", tmp_path, "--no-progress")
    assert_clean_error(result, "--out-stack", "is a directory")
    result = invoke("train", run["maps"], "--out", blocker / "run", *TINY)
    assert_clean_error(result, "file.txt")
    result = invoke("evaluate", run["maps"], "--model", run["ckpt"], "--out", blocker / "ev")
    assert_clean_error(result, "file.txt")
    result = invoke("train", run["maps"], "--out", run["out"], *TINY)
    assert_clean_error(result, "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_bad_options(run: dict[str, Path], tmp_path: Path) -> None:
    stack = run["maps"] / "disc" / "disc.mrcs"
    lenet = tmp_path / "lenet.pt"
    model = create_model("lenet_fc", num_classes=3, img_size=SIZE)
    save_checkpoint(lenet, model, {
        "class_names": list(CLASSES),
        "preprocess": torch.load(run["ckpt"], weights_only=True)["preprocess"],
        "views": {"slice_axis": "z", "slices": "central", "project": False, "as_volume": None},
    })
    assert_clean_error(invoke("predict", stack, "--model", lenet, "--cam", tmp_path / "c.png",
                              "--no-progress"), "--cam", "lenet_fc")
    assert_clean_error(invoke("predict", stack, "--model", run["ckpt"], "--select", "cube",
                              "--out-stack", tmp_path / "s.mrcs"), "--select", "cube")
    assert_clean_error(invoke("predict", stack, "--model", run["ckpt"], "--select", "disc"),
                       "--out-stack")
    assert_clean_error(invoke("predict", str(tmp_path / "nothing*.mrc"), "--model", run["ckpt"]),
                       "no files match")
    assert_clean_error(invoke("train", run["maps"], "--out", tmp_path / "r", "--model-kwargs",
                              "[1, 2]"), "--model-kwargs")
    assert_clean_error(invoke("train", run["maps"], "--out", tmp_path / "r", "--model", "lenet_fc",
                              "--device", "cpu"), "lenet_fc", "24x24")
    assert_clean_error(invoke("evaluate", run["maps"], "--model", run["ckpt"], "--shifts", "0,a",
                              "--out", tmp_path / "e"), "--shifts")
    assert_clean_error(invoke("evaluate", run["maps"], "--model", run["ckpt"], "--consistency-shift",
                              "-1", "--out", tmp_path / "e"), "--consistency-shift")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.pt"]


def test_evaluate_rejects_unknown_class(run: dict[str, Path], tmp_path: Path) -> None:
    maps = make_maps(tmp_path / "maps", n=2)
    (maps / "disc").rename(maps / "cube")
    result = invoke("evaluate", maps, "--model", run["ckpt"], "--out", tmp_path / "e",
                    "--no-progress")
    assert_clean_error(result, "cube")
    assert not (tmp_path / "e").exists()


def test_help_has_examples() -> None:
    for cmd in ("train", "predict", "evaluate"):
        result = invoke(cmd, "--help")
        assert result.exit_code == 0 and re.search(r"--model", result.output)
