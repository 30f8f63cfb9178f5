"""``biocnn simulate`` end to end with CliRunner, and its answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from typer.testing import CliRunner

from biocnn.cli import app

DATA = Path(__file__).resolve().parents[1] / "biocnn" / "sim" / "data"
runner = CliRunner()


def test_cli_end_to_end_with_preview(tmp_path: Path) -> None:
    out, png = tmp_path / "set", tmp_path / "gallery.png"
    result = runner.invoke(app, [
        "simulate", str(out), "--structures", str(DATA / "1ubi.pdb"), str(DATA / "3mht.pdb"),
        "--n-per-class", "8", "--box", "32", "--apix", "4", "--names", "ubq,mtase",
        "--preview", str(png), "--no-progress", "--seed", "7",
    ])
    assert result.exit_code == 0, result.output
    assert "wrote 16 images of 2 classes" in result.output
    for name in ("ubq", "mtase"):
        with mrcfile.open(out / name / f"{name}.mrcs") as mrc:
            assert mrc.data.shape == (8, 32, 32)
            assert float(mrc.voxel_size.x) == pytest.approx(4.0)
    star = starfile.read(out / "particles.star")["particles"]
    assert list(star["rlnClassName"].unique()) == ["ubq", "mtase"] and len(star) == 16
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seed"] == 7 and run["config"]["names"] == ["ubq", "mtase"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_demo_uses_demo_settings_unless_overridden(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    result = runner.invoke(app, ["simulate", "--demo", str(out), "--n-per-class", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert (cfg["box"], cfg["apix"], cfg["n_per_class"]) == (64, 4.0, 2)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1r19", "1ubi", "3mht", "3o21"]
    assert np.isfinite(mrcfile.read(out / "3o21" / "3o21.mrcs")).all()


def test_cli_warns_when_the_box_is_too_small(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(tmp_path / "o"), str(DATA / "3mht.pdb"),
                                 "--box", "16", "--apix", "4", "--n-per-class", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "use --box >= 22" in result.stderr
    assert mrcfile.read(tmp_path / "o" / "3mht" / "3mht.mrcs").shape == (2, 16, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--apix", "0"], "--apix 0.0: must be > 0"),
        (["--apix", "-2"], "--apix -2.0: must be > 0"),
        (["--snr", "0"], "--snr 0.0: must be > 0"),
        (["--snr", "-1"], "--snr -1.0: must be > 0"),
        (["--structures", "{tmp}/missing.pdb"], "does not exist"),
        (["--structures", "{tmp}/empty.pdb"], "contains no atoms"),
        (["--structures", "{tmp}/flat.mrc"], "not a 3D volume"),
        (["--demo", "--structures", "{data}/1ubi.pdb"], "--demo uses the shipped"),
        (["--preview", "{tmp}/p.xyz"], "unsupported image format"),
        (["--kind", "bogus"], "--kind 'bogus': must be"),
        (["--kind", "class-averages", "--names", "a"], "always 'good' and 'junk'"),
        (["--map-apix", "x"], "--map-apix: expected"),
    ],
)
def test_cli_bad_input_is_one_line_error_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty.pdb").write_text("")
    with mrcfile.new(tmp_path / "flat.mrc") as mrc:
        mrc.set_data(np.zeros((8, 8), dtype=np.float32))
    args = [a.format(tmp=tmp_path, data=DATA) for a in args]
    if "--structures" not in args and "--demo" not in args:
        args += ["--structures", str(DATA / "1ubi.pdb")]
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", str(out), "--n-per-class", "2", "--box", "16",
                                 "--no-progress", *args])
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert not out.exists()


def test_cli_needs_structures_and_refuses_a_non_empty_output(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no structures" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(app, ["simulate", str(tmp_path / "full"), str(DATA / "1ubi.pdb")])
    assert result.exit_code == 1 and "full: is not empty (use --overwrite)" in result.stderr
    result = runner.invoke(app, ["simulate", "--structures", str(DATA / "1ubi.pdb"),
                                 str(DATA / "3mht.pdb"), str(tmp_path / "o")])
    assert result.exit_code == 1 and "give the output folder first" in result.stderr
    assert (DATA / "3mht.pdb").is_file()


def test_cli_class_averages(tmp_path: Path) -> None:
    out = tmp_path / "ca"
    result = runner.invoke(app, ["simulate", str(out), "--kind", "class-averages",
                                 "--n-per-class", "4", "--box", "32", "--no-progress",
                                 "--procedural-share", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 images of 2 classes (good, junk)" in result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["kind"] == "class-averages"
    assert run["config"]["averages"]["procedural_share"] == 1.0
    assert sum(run["summary"]["junk_kinds"].values()) == 4
    for name in ("good", "junk"):
        assert mrcfile.read(out / name / f"{name}.mrcs").shape == (4, 32, 32)


@pytest.mark.parametrize("name", ["sim_class_averages.toml", "sim_class_averages_heldout.toml"])
def test_shipped_simulation_configs_run_with_overrides(tmp_path: Path, name: str) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / name
    out = tmp_path / "ca"
    result = runner.invoke(app, ["simulate", str(out), "--config", str(config),
                                 "--n-per-class", "2", "--box", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert cfg["kind"] == "class-averages" and (cfg["n_per_class"], cfg["box"]) == (2, 32)
    assert cfg["seed"] in (1, 1000) and cfg["averages"]["particles_max"] == 1000


def test_config_file_for_particles_and_bad_keys(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        f'structures = ["{DATA / "1ubi.pdb"}"]\nn_per_class = 3\nbox = 24\napix = 4.0\n')
    result = runner.invoke(app, ["simulate", str(tmp_path / "o"), "--config",
                                 str(tmp_path / "p.toml"), "--no-progress", "--seed", "5"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "o" / "run.json").read_text())["config"]
    assert (cfg["n_per_class"], cfg["box"], cfg["seed"], cfg["kind"]) == (3, 24, 5, "particles")
    (tmp_path / "bad.toml").write_text("bogus = 1\n")
    result = runner.invoke(app, ["simulate", str(tmp_path / "b"), "--config",
                                 str(tmp_path / "bad.toml"), str(DATA / "1ubi.pdb")])
    assert result.exit_code == 1 and "unknown config key 'bogus'" in result.stderr


def test_cli_map_without_pixel_size_needs_map_apix(tmp_path: Path) -> None:
    z, y, x = np.indices((24, 24, 24)) - 12
    with mrcfile.new(tmp_path / "nohdr.mrc") as mrc:
        mrc.set_data((2.0 + np.exp(-(x**2 + y**2 + z**2) / 8.0)).astype(np.float32))
    args = ["simulate", "--structures", str(tmp_path / "nohdr.mrc"), str(DATA / "1ubi.pdb"),
            "--n-per-class", "2", "--box", "24", "--apix", "4", "--no-progress"]
    result = runner.invoke(app, [*args[:1], str(tmp_path / "a"), *args[1:]])
    assert result.exit_code == 1 and "no voxel size in its header (use --map-apix)" in result.stderr
    result = runner.invoke(app, [*args[:1], str(tmp_path / "b"), *args[1:], "--map-apix", "3,0"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["map_apix"] == [3.0, 0.0]
