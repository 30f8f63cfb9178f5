"""biocnn.io.relion and ``biocnn relion predict``: RELION-ready STAR files (complete optics,
project-relative names, input columns unchanged) and the External job protocol, on a fake
RELION project folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from biocnn.checkpoint import save_checkpoint
from biocnn.cli import app
from biocnn.data import PreprocessConfig, ViewSpec
from biocnn.io.mrc import write_mrc
from biocnn.io.relion import (
    OPTICS_DEFAULTS,
    add_predictions,
    complete_optics,
    mark_exit,
    rebase_names,
    relion_name,
    write_output_nodes,
)
from biocnn.io.star import format_image_name, read_star, write_star
from biocnn.models import create_model

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "realworld"
REQUIRED = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize",
            "rlnImageDimensionality", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
runner = CliRunner()


def _relion30(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A RELION 3.0 particle table: optics per particle, origins in pixels."""
    return pd.DataFrame({
        "rlnImageName": [format_image_name(i, "Extract/job005/Movies/a.mrcs") for i in range(n)],
        "rlnVoltage": [300.0] * (n - n // 2) + [200.0] * (n // 2),
        "rlnSphericalAberration": [2.7] * n,
        "rlnAmplitudeContrast": [0.07] * n,
        "rlnDefocusU": rng.uniform(5000, 30000, n).round(6),
        "rlnOriginX": rng.uniform(-3, 3, n).round(6),
        "rlnOriginY": rng.uniform(-3, 3, n).round(6),
        "rlnClassNumber": rng.integers(1, 4, n),
        "rlnMaxValueProbDistribution": rng.uniform(0, 1, n).round(6),
    })


def test_complete_optics_moves_relion30_optics_and_keeps_columns() -> None:
    parts = _relion30(6, np.random.default_rng(0))
    apix = np.full(6, 1.5)
    out, optics, defaulted = complete_optics(parts, None, apix, np.full(6, 64))
    assert defaulted == []
    assert list(optics.columns[: len(REQUIRED)]) == REQUIRED
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]  # one group per microscope setting
    assert optics["rlnAmplitudeContrast"].tolist() == [0.07, 0.07]
    assert (optics["rlnImagePixelSize"] == 1.5).all() and (optics["rlnImageSize"] == 64).all()
    assert out["rlnOpticsGroup"].tolist() == [1, 1, 1, 2, 2, 2]
    for col in parts.columns:  # every input column unchanged
        pd.testing.assert_series_equal(out[col], parts[col])
    np.testing.assert_allclose(out["rlnOriginXAngst"], parts["rlnOriginX"] * 1.5)
    np.testing.assert_allclose(out["rlnOriginYAngst"], parts["rlnOriginY"] * 1.5)


def test_complete_optics_defaults_and_existing_tables() -> None:
    parts = pd.DataFrame({"rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"]})
    out, optics, defaulted = complete_optics(parts, None, np.array([2.0, 2.0]), np.array([32, 32]))
    assert sorted(defaulted) == sorted(OPTICS_DEFAULTS)
    assert optics[list(OPTICS_DEFAULTS)].iloc[0].tolist() == [300.0, 2.7, 0.1]
    assert out["rlnOpticsGroup"].tolist() == [1, 1]
    # a RELION 3.1 optics table lacking some columns: kept, completed, groups respected
    given_optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["g1", "g2"],
                                 "rlnImagePixelSize": [1.1, 2.2], "rlnVoltage": [200.0, 300.0],
                                 "rlnMicrographOriginalPixelSize": [0.55, 1.1]})
    parts = pd.DataFrame({"rlnImageName": ["1@a.mrcs", "1@b.mrcs"], "rlnOpticsGroup": [2, 1]})
    out, optics, defaulted = complete_optics(parts, given_optics, np.array([2.2, 1.1]),
                                             np.array([48, 24]))
    assert optics["rlnImagePixelSize"].tolist() == [1.1, 2.2]  # never replaced
    assert optics["rlnImageSize"].tolist() == [24, 48]  # from each group's own images
    assert optics["rlnMicrographOriginalPixelSize"].tolist() == [0.55, 1.1]
    assert sorted(defaulted) == ["rlnAmplitudeContrast", "rlnSphericalAberration"]
    assert out["rlnOpticsGroup"].tolist() == [2, 1]
    with pytest.raises(Exception, match="optics group 3"):
        complete_optics(parts.assign(rlnOpticsGroup=[3, 1]), given_optics, np.ones(2), np.ones(2))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1), st.booleans())
def test_complete_optics_properties(n: int, seed: int, with_groups: bool) -> None:
    """Any 3.0-style table: columns unchanged, every particle's group in the optics table
    with the particle's own voltage, pixel size and box, and every required column present."""
    rng = np.random.default_rng(seed)
    parts = _relion30(n, rng)
    if with_groups:
        parts["rlnOpticsGroup"] = np.where(parts["rlnVoltage"] > 250, 1, 2)
    apix = rng.choice([1.0, 1.5], n)
    size = np.where(apix == 1.0, 96, 64)
    if with_groups:  # an existing group must share its pixel size
        apix, size = np.where(parts["rlnOpticsGroup"] == 1, 1.0, 1.5), np.where(
            parts["rlnOpticsGroup"] == 1, 96, 64)
    out, optics, _ = complete_optics(parts, None, apix, size)
    assert set(REQUIRED) <= set(optics.columns)
    for col in parts.columns:
        pd.testing.assert_series_equal(out[col], parts[col])
    table = optics.set_index("rlnOpticsGroup")
    for i, g in enumerate(out["rlnOpticsGroup"].tolist()):
        assert table.loc[g, "rlnVoltage"] == parts["rlnVoltage"][i]
        assert table.loc[g, "rlnImagePixelSize"] == apix[i] and table.loc[g, "rlnImageSize"] == size[i]


def test_add_predictions_never_touches_relion_labels() -> None:
    parts = _relion30(3, np.random.default_rng(1))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    out = add_predictions(parts, probs, ["good", "junk ice"])
    for col in parts.columns:
        pd.testing.assert_series_equal(out[col], parts[col])
    assert out["biocnnClassNumber"].tolist() == [1, 2, 1]
    assert out["biocnnClassName"].tolist() == ["good", "junk_ice", "good"]
    assert out["biocnnProbability"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert out["biocnnProbability_junk_ice"].tolist() == pytest.approx([0.1, 0.8, 0.4])
    with pytest.warns(UserWarning, match="earlier biocnn prediction"):
        again = add_predictions(out, probs[:, ::-1], ["a", "b"])
    assert "biocnnProbability_good" not in again.columns and again["biocnnClassName"][0] == "b"


def test_names_relative_to_the_project(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    stack = project / "Extract" / "job005" / "a.mrcs"
    write_mrc(stack, np.zeros((3, 8, 8), np.float32), apix=1.0, is_stack=True)
    assert relion_name(stack, 2, project) == "000003@Extract/job005/a.mrcs"
    assert relion_name(stack, None, project) == "Extract/job005/a.mrcs"
    assert relion_name(stack, 0, tmp_path / "elsewhere") == f"000001@{stack}"  # outside: absolute
    # names that already open the file from the project are kept verbatim; others rebased
    kept = rebase_names(["3@Extract/job005/a.mrcs"], [stack], project)
    moved = rebase_names(["000003@a.mrcs"], [stack], project)
    assert kept == ["3@Extract/job005/a.mrcs"] and moved == ["000003@Extract/job005/a.mrcs"]


def test_output_nodes_and_exit_markers(tmp_path: Path) -> None:
    job = tmp_path / "External" / "job012"
    star = job / "particles.star"
    write_star(star, pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnOpticsGroup": [1]}),
                      complete_optics(pd.DataFrame({"rlnImageName": ["1@a.mrcs"]}), None,
                                      np.ones(1), np.ones(1) * 8)[1])
    nodes = starfile.read(write_output_nodes(job, [star], project=tmp_path), always_dict=True)
    table = nodes["output_nodes"]
    assert table["rlnPipeLineNodeName"].tolist() == ["External/job012/particles.star"]
    assert table["rlnPipeLineNodeTypeLabel"].tolist() == ["ParticleGroupMetadata.star"]
    assert table["rlnPipeLineNodeType"].tolist() == [3]
    mark_exit(job, False)
    assert (job / "RELION_JOB_EXIT_FAILURE").exists()
    mark_exit(job, True)  # a re-run replaces the stale marker
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists() and not (job / "RELION_JOB_EXIT_FAILURE").exists()


def _checkpoint(path: Path, names: list[str], box: int = 16, apix: float = 2.0) -> Path:
    model = create_model("invariant", num_classes=len(names), widths=[4, 8])
    pre = PreprocessConfig(box=box, apix=apix)
    return save_checkpoint(path, model, {"class_names": names, "preprocess": pre.to_dict(),
                                         "views": ViewSpec().to_dict()})


def _project(root: Path) -> tuple[Path, pd.DataFrame]:
    """A fake RELION project: Extract/job005/particles.star (RELION 3.0) and its stacks."""
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        write_mrc(root / "Extract" / "job005" / "Movies" / f"{name}.mrcs",
                  rng.standard_normal((4, 16, 16)).astype(np.float32), apix=0.0, is_stack=True)
    parts = _relion30(8, rng)
    parts["rlnImageName"] = [format_image_name(i % 4, f"Extract/job005/Movies/{'ab'[i // 4]}.mrcs")
                             for i in range(8)]
    parts["rlnDetectorPixelSize"] = 5.0  # µm; 5e4 / 25000 = 2 Å/px
    parts["rlnMagnification"] = 25000.0
    star = root / "Extract" / "job005" / "particles.star"
    starfile.write(parts, star)  # one data block: RELION 3.0
    return star, parts


def test_relion_external_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    star, parts = _project(tmp_path)
    ckpt = _checkpoint(tmp_path / "models" / "m.pt", ["good", "junk"])
    monkeypatch.chdir(tmp_path)  # RELION runs External jobs from the project folder
    result = runner.invoke(app, ["relion", "predict", "--o", "External/job012/", "--in_parts",
                                 "Extract/job005/particles.star", "--j", "1", "--model", str(ckpt),
                                 "--device", "cpu", "--tta", "no"])
    assert result.exit_code == 0, result.output
    job = tmp_path / "External" / "job012"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    text = (job / "particles.star").read_text()  # RELION's version line before each block
    assert text.count("# version 30001\n\ndata_") == 2 and "data_optics" in text
    blocks = starfile.read(job / "particles.star", always_dict=True)
    out, optics = blocks["particles"], blocks["optics"]
    assert set(REQUIRED) <= set(optics.columns)
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0] and (optics["rlnImagePixelSize"] == 2.0).all()
    for col in parts.columns:  # the RELION 3.0 rows are unchanged, names included
        np.testing.assert_array_equal(out[col].to_numpy(), parts[col].to_numpy(), err_msg=col)
    paths, sections = read_star(job / "particles.star").image_refs()
    assert [p.resolve() for p in paths] == [(tmp_path / n.split("@")[1]).resolve()
                                            for n in parts["rlnImageName"]]
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    listed = nodes["rlnPipeLineNodeName"].tolist()
    assert listed[0] == "External/job012/particles.star"
    assert all((tmp_path / name).is_file() for name in listed)
    pred = out["biocnnClassName"]
    for name in listed[1:]:  # one STAR per class that has particles: the subset, all columns
        sub = starfile.read(tmp_path / name, always_dict=True)["particles"]
        cls = name.rsplit("particles_", 1)[1].removesuffix(".star")
        assert len(sub) == int((pred == cls).sum()) and list(sub.columns) == list(out.columns)
    assert sum(len(starfile.read(tmp_path / n, always_dict=True)["particles"]) for n in listed[1:]) == 8


def test_relion_external_job_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["relion", "predict", "--o", "External/job013/", "--in_parts",
                                 "Extract/job005/particles.star", "--model", "bad.pt"])
    assert result.exit_code == 1 and "bad.pt" in result.stderr and "Traceback" not in result.output
    job = tmp_path / "External" / "job013"
    assert (job / "RELION_JOB_EXIT_FAILURE").exists() and not (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (job / "RELION_OUTPUT_NODES.star").exists()
    ckpt = _checkpoint(tmp_path / "m.pt", ["good", "junk"])
    result = runner.invoke(app, ["relion", "predict", "--o", "External/job014/", "--in_parts",
                                 "Extract/job005/particles.star", "--model", str(ckpt),
                                 "--select", "ice"])
    assert result.exit_code == 1 and "--select" in result.stderr
    assert (tmp_path / "External" / "job014" / "RELION_JOB_EXIT_FAILURE").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real-world files not present")
@pytest.mark.parametrize("star", ["relion31.star", "relion31.v2.star"])
def test_real_star_round_trip(tmp_path: Path, star: str) -> None:
    """The shared real STAR files: every input column unchanged, optics complete, names
    resolvable from the project folder (here: the test's folder)."""
    ckpt = _checkpoint(tmp_path / "m.pt", ["a", "b"], box=32, apix=2.806 * 8)
    out = tmp_path / "out" / "p.star"
    result = runner.invoke(app, ["predict", str(REAL / star), "--model", str(ckpt), "--star",
                                 str(out), "--relion-project", str(tmp_path), "--apix", "2.806",
                                 "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    source = starfile.read(REAL / star, always_dict=True)
    source = source.get("particles", next(iter(source.values())))
    blocks = starfile.read(out, always_dict=True)
    parts = blocks["particles"]
    for col in source.columns:
        if col == "rlnImageName":  # rebased: the stack is outside the project folder
            continue
        np.testing.assert_array_equal(parts[col].to_numpy(), source[col].to_numpy(), err_msg=col)
    assert set(REQUIRED) <= set(blocks["optics"].columns)
    assert blocks["optics"]["rlnImagePixelSize"].tolist() == [2.806]
    paths, sections = read_star(out).image_refs()
    assert {p.resolve() for p in paths} == {(REAL / "relion31.mrcs").resolve()}
    assert sections.tolist() == list(range(5))


def test_relion_help_and_bad_project(tmp_path: Path) -> None:
    result = runner.invoke(app, ["relion", "predict", "--help"])
    assert result.exit_code == 0 and "--in_parts" in result.output and "--o" in result.output
    ckpt = _checkpoint(tmp_path / "m.pt", ["good", "junk"])
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 16), np.float32), apix=2.0, is_stack=True)
    result = runner.invoke(app, ["predict", str(tmp_path / "s.mrcs"), "--model", str(ckpt),
                                 "--star", str(tmp_path / "o.star"), "--relion-project",
                                 str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "--relion-project" in result.stderr
    assert not (tmp_path / "o.star").exists()
