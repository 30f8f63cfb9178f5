"""``biocnn select``: scores, threshold, outputs for MRC / RELION / cryoSPARC inputs, OOD checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from biocnn.checkpoint import load_classifier, save_checkpoint
from biocnn.cli import app
from biocnn.data.preprocess import PreprocessConfig, circular_mask
from biocnn.errors import BiocnnError
from biocnn.io.mrc import ViewSpec, write_mrc
from biocnn.io.star import read_star
from biocnn.models.registry import create_model
from biocnn.tasks.select import (
    SelectConfig,
    good_probability,
    input_warnings,
    ood_reasons,
    resolve_classes,
    run_select,
)

BOX = 32


def _checkpoint(path: Path, **meta: object) -> Path:
    torch.manual_seed(0)
    model = create_model("invariant", num_classes=2, widths=[4, 8]).eval()
    pre = PreprocessConfig(box=BOX, apix=2.0)
    save_checkpoint(path, model, {"class_names": ["good", "junk"], "preprocess": pre.to_dict(),
                                  "views": ViewSpec().to_dict(), **meta})
    return path


def _average(rng: np.random.Generator, sigma: float, box: int = BOX, noise: float = 0.02,
             sign: float = 1.0) -> np.ndarray:
    """A class-average-like image: a white blob, faint noise, zero outside a soft mask."""
    c = np.arange(box) - box // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    img = sign * np.exp(-r2 / (2 * sigma**2)) + noise * rng.standard_normal((box, box))
    mask = np.clip((0.45 * box - np.sqrt(r2)) / 2, 0, 1)
    return (img * mask).astype(np.float32)


def _averages(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([_average(rng, 2.0 + i) for i in range(n)])


def _relion_job(root: Path, n: int = 6, version_30: bool = False) -> Path:
    """``Class2D/job010/run_it025_{classes.mrcs, model.star, data.star}`` under ``root``."""
    job = root / "Class2D" / "job010"
    job.mkdir(parents=True)
    write_mrc(job / "run_it025_classes.mrcs", _averages(n), apix=2.0, is_stack=True)
    classes = "\n".join(f"{i + 1:06d}@Class2D/job010/run_it025_classes.mrcs {1 / n:.4f} {8 + i:.2f}"
                        for i in range(n))
    (job / "run_it025_model.star").write_text(
        "\ndata_model_general\n\n_rlnReferenceDimensionality 2\n_rlnOriginalImageSize 32\n"
        f"_rlnPixelSize 2.000000\n_rlnNrClasses {n}\n\ndata_model_classes\n\nloop_\n"
        "_rlnReferenceImage #1\n_rlnClassDistribution #2\n_rlnEstimatedResolution #3\n"
        f"{classes}\n\ndata_model_class_1\n\nloop_\n_rlnSpectralIndex #1\n0\n")
    numbers = [1 + (k % n) for k in range(3 * n + 2)]  # classes 1 and 2 get one more
    rows = "\n".join(f"{k + 1:06d}@Extract/job005/parts.mrcs {num} {10000 + k}.0 1"
                     for k, num in enumerate(numbers))
    optics = ("" if version_30 else
              "data_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
              "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnImageDimensionality #5\n"
              "_rlnVoltage #6\n_rlnSphericalAberration #7\n_rlnAmplitudeContrast #8\n"
              "opticsGroup1 1 2.0 32 2 300 2.7 0.1\n\n")
    (job / "run_it025_data.star").write_text(
        f"# version 30001\n\n{optics}data_particles\n\nloop_\n_rlnImageName #1\n"
        f"_rlnClassNumber #2\n_rlnDefocusU #3\n_rlnOpticsGroup #4\n{rows}\n")
    (job / "run_it024_model.star").write_text("data_model_general\n\n_rlnPixelSize 9\n")
    return job


def _logits(ckpt: Path, images: np.ndarray) -> torch.Tensor:
    clf = load_classifier(ckpt, "cpu")
    return clf.logits(torch.from_numpy(images)[:, None])


def test_mrc_stack_scores_threshold_and_outputs(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    write_mrc(tmp_path / "avg.mrcs", _averages(), apix=2.0, is_stack=True)
    expected = good_probability(_logits(ckpt, _averages()), 0)
    threshold = float(np.median(expected))
    res = run_select(SelectConfig(inputs=(str(tmp_path / "avg.mrcs"),), model=str(ckpt),
                                  out=str(tmp_path / "out"), threshold=threshold), log=lambda s: None)
    np.testing.assert_allclose(res.scores, expected, atol=1e-5)
    assert res.selected.tolist() == (expected >= threshold).tolist()
    assert 0 < res.selected.sum() < 6
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"good.mrcs", "bad.mrcs", "classes.csv",
                                              "selection.json", "report.html"}
    table = pd.read_csv(out / "classes.csv")
    assert table["selected"].tolist() == res.selected.astype(int).tolist()
    info = json.loads((out / "selection.json").read_text())
    assert info["kept"] == int(res.selected.sum()) and info["threshold"] == threshold
    from biocnn.io.mrc import read_sections

    good = read_sections(str(out / "good.mrcs"), np.arange(int(res.selected.sum())))
    np.testing.assert_array_equal(good, _averages()[res.selected])  # original pixels
    # existing output folder refused, replaced with overwrite
    cfg = SelectConfig(inputs=(str(tmp_path / "avg.mrcs"),), model=str(ckpt), out=str(out))
    with pytest.raises(BiocnnError, match="exists"):
        run_select(cfg, log=lambda s: None)
    res2 = run_select(SelectConfig(**{**cfg.__dict__, "overwrite": True, "threshold": 0.0}),
                      log=lambda s: None)
    assert res2.selected.all() and not (out / "bad.mrcs").exists()


def test_temperature_and_threshold_from_checkpoint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", temperature=0.05, threshold=0.3)
    write_mrc(tmp_path / "avg.mrcs", _averages(), apix=2.0, is_stack=True)
    res = run_select(SelectConfig(inputs=(str(tmp_path / "avg.mrcs"),), model=str(ckpt),
                                  out=str(tmp_path / "o")), log=lambda s: None)
    expected = torch.softmax(_logits(ckpt, _averages()).double() / 0.05, 1)[:, 0].numpy()
    np.testing.assert_allclose(res.scores, expected, atol=1e-5)
    assert res.threshold == 0.3 and res.temperature == 0.05


def test_good_class_must_exist(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    write_mrc(tmp_path / "avg.mrcs", _averages(), apix=2.0, is_stack=True)
    with pytest.raises(BiocnnError, match=r"^good_class 'keep': not a class of "):
        run_select(SelectConfig(inputs=(str(tmp_path / "avg.mrcs"),), model=str(ckpt),
                                out=str(tmp_path / "o"), good_class="keep"), log=lambda s: None)
    # junk as the "good" class turns the scores around
    res = run_select(SelectConfig(inputs=(str(tmp_path / "avg.mrcs"),), model=str(ckpt),
                                  out=str(tmp_path / "o"), good_class="junk"), log=lambda s: None)
    np.testing.assert_allclose(res.scores, good_probability(_logits(ckpt, _averages()), 1), atol=1e-5)


@pytest.mark.parametrize("version_30", [False, True])
def test_relion_job_folder_and_particles_star(tmp_path: Path, version_30: bool) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    job = _relion_job(tmp_path, version_30=version_30)
    assert resolve_classes([str(job)]).model_star == job / "run_it025_model.star"  # last iteration
    assert resolve_classes([str(job / "run_it025_classes.mrcs")]).kind == "relion"
    expected = good_probability(_logits(ckpt, _averages()), 0)
    threshold = float(np.sort(expected)[2])  # classes 3 of 6 below, rest kept
    cfg = SelectConfig(inputs=(str(job),), model=str(ckpt), out=str(tmp_path / "sel"),
                       threshold=threshold)
    if version_30:  # no optics table: microscope values defaulted, and said so
        with pytest.warns(UserWarning, match="rlnVoltage.*not recorded"):
            res = run_select(cfg, log=lambda s: None)
    else:
        res = run_select(cfg, log=lambda s: None)
    assert res.counts.tolist() == [4, 4, 3, 3, 3, 3]
    star = read_star(tmp_path / "sel" / "particles.star")
    kept = set((np.flatnonzero(res.selected) + 1).tolist())
    assert set(star.particles["rlnClassNumber"].astype(int)) == kept
    assert len(star.particles) == res.particles_kept == int(res.counts[res.selected].sum())
    assert {"rlnImageName", "rlnDefocusU", "rlnOpticsGroup"} <= set(star.particles.columns)
    assert {"rlnVoltage", "rlnImagePixelSize", "rlnImageSize"} <= set(star.optics.columns)
    assert float(star.optics["rlnImagePixelSize"].iloc[0]) == 2.0
    table = pd.read_csv(tmp_path / "sel" / "classes.csv")
    assert table["rlnEstimatedResolution"].tolist() == [8.0, 9.0, 10.0, 11.0, 12.0, 13.0]
    assert table["particles"].tolist() == [4, 4, 3, 3, 3, 3]


def test_relion_model_star_input_and_cli(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    job = _relion_job(tmp_path)
    result = CliRunner().invoke(app, ["select", str(job / "run_it025_model.star"), "--model",
                                      str(ckpt), "--out", str(tmp_path / "s"), "--threshold", "0"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert info["kept"] == 6 and info["particles_kept"] == info["particles_total"] == 20
    again = CliRunner().invoke(app, ["select", str(job), "--model", str(ckpt), "--out", str(job),
                                     "--overwrite"])
    assert again.exit_code == 1 and "holds the input" in again.output
    assert (job / "run_it025_classes.mrcs").is_file()  # --overwrite never deletes an input


def test_cryosparc_cs_input(tmp_path: Path) -> None:
    from biocnn.io.cs import PATH_FIELD

    ckpt = _checkpoint(tmp_path / "m.pt")
    write_mrc(tmp_path / "J3_class_averages.mrc", _averages(), apix=2.0, is_stack=True)
    n = 6
    dtype = [("uid", "<u8"), (PATH_FIELD, "S40"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
             ("blob/shape", "<u4", (2,))]
    arr = np.zeros(n, dtype=dtype)
    arr["uid"] = np.arange(n)
    arr[PATH_FIELD] = b"J3_class_averages.mrc"
    arr["blob/idx"] = np.arange(n)
    arr["blob/psize_A"] = 2.0
    arr["blob/shape"] = BOX
    with open(tmp_path / "J3_class_averages.cs", "wb") as fh:
        np.save(fh, arr)
    inputs = (str(tmp_path / "J3_class_averages.cs"), str(tmp_path / "J3_class_averages.mrc"))
    res = run_select(SelectConfig(inputs=inputs, model=str(ckpt), out=str(tmp_path / "o"),
                                  cs_project=str(tmp_path)), log=lambda s: None)
    assert len(res.scores) == n  # the .mrc is not read twice
    np.testing.assert_allclose(res.scores, good_probability(_logits(ckpt, _averages()), 0), atol=1e-5)


def _background() -> torch.Tensor:
    return ~circular_mask(BOX, 0.4 * BOX)


def test_ood_class_averages_pass() -> None:
    x = torch.from_numpy(_averages(8))
    assert ood_reasons(x, _background(), np.full(8, 2.0), 2.0) == [[]] * 8


def test_ood_raw_particles_have_busy_background() -> None:
    rng = np.random.default_rng(1)
    raw = np.stack([_average(rng, 3.0, noise=0.0) for _ in range(4)]) \
        + rng.standard_normal((4, BOX, BOX)).astype(np.float32)  # SNR ~ 1, noise everywhere
    reasons = ood_reasons(torch.from_numpy(raw), _background())
    assert all("busy background" in r for r in reasons)
    assert any("as busy as the centre" in line for line in input_warnings(reasons))


def test_ood_micrograph_counts_have_offset_background() -> None:
    rng = np.random.default_rng(2)
    mic = 10000 + 30 * rng.standard_normal((3, BOX, BOX))
    reasons = ood_reasons(torch.from_numpy(mic), _background())
    assert all({"busy background", "offset background"} <= set(r) for r in reasons)


def test_ood_inverted_contrast() -> None:
    rng = np.random.default_rng(3)
    dark = np.stack([_average(rng, 3.0, sign=-1.0) for _ in range(3)])
    assert all(r == ["inverted contrast"] for r in ood_reasons(torch.from_numpy(dark), _background()))


def test_ood_pixel_size_and_input_level_share() -> None:
    x = torch.from_numpy(_averages(4))
    reasons = ood_reasons(x, _background(), np.array([2.0, 2.0, 2.0, 4.5]), 2.0)
    assert reasons == [[], [], [], ["pixel size"]]
    (line,) = input_warnings(reasons, 2.0, np.array([2.0, 2.0, 2.0, 4.5]))  # pixel size: any image
    assert "1 of 4" in line and "(2 Å; input median 4.5 Å)" in line
    # one noise-only junk class among class averages is no input-level warning
    assert input_warnings([["busy background"], [], [], []]) == []


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e4), seed=st.integers(0, 2**16), sign=st.sampled_from([1.0, -1.0]),
       noise=st.floats(0.0, 2.0))
def test_ood_reasons_do_not_depend_on_the_intensity_scale(scale: float, seed: int, sign: float,
                                                          noise: float) -> None:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([_average(rng, 3.0, noise=noise, sign=sign) for _ in range(2)]))
    assert ood_reasons(x * scale, _background()) == ood_reasons(x, _background())


@pytest.mark.parametrize(("text", "message"), [
    ("data_model_general\n\n_rlnPixelSize 2\n", "no data_model_classes"),
    ("data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
     "000001@c.mrcs\n", "line 6 has 1 values"),
    ("data_model_classes\n\nloop_\n_rlnReferenceImage #1\n000002@run_it001_classes.mrcs\n"
     "000001@run_it001_classes.mrcs\n", "not 1..2 in order"),
])
def test_bad_model_star_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    write_mrc(tmp_path / "run_it001_classes.mrcs", _averages(2), apix=2.0, is_stack=True)
    (tmp_path / "run_it001_model.star").write_text(text)
    with pytest.raises(BiocnnError, match=message) as err:
        resolve_classes([str(tmp_path)])
    assert "\n" not in str(err.value)


def test_overwrite_never_deletes_a_folder_of_other_files(tmp_path: Path) -> None:
    from biocnn.atomic import atomic_dir
    from biocnn.errors import BiocnnError

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(BiocnnError, match="not an earlier output"), \
            atomic_dir(mine, overwrite=True, marker="selection.json"):
        pass
    assert (mine / "thesis.txt").read_text() == "years of work"
    (mine / "selection.json").write_text("{}")
    with atomic_dir(mine, overwrite=True, marker="selection.json") as tmp:
        (tmp / "selection.json").write_text("{}")
    assert sorted(p.name for p in mine.iterdir()) == ["selection.json"]


def test_ood_checks_use_the_particle_mask_even_with_whole_image_standardisation() -> None:
    import torch

    from biocnn.data import PreprocessConfig
    from biocnn.data.preprocess import circular_mask
    from biocnn.tasks.select import ood_reasons

    pre = PreprocessConfig(box=32, apix=0.0, norm_region="image")
    assert bool(pre.standardizer().background.all())  # the model's statistics: every pixel
    mask = ~circular_mask(32, pre.mask_radius_px(32))
    busy = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert all(r for r in ood_reasons(busy, mask))  # raw noise everywhere: flagged


def test_inputs_of_different_sizes_are_refused_before_scoring(tmp_path: Path) -> None:
    import numpy as np

    from biocnn.errors import BiocnnError
    from biocnn.io.mrc import write_mrc
    from biocnn.tasks.select import SHIPPED_MODEL, SelectConfig, run_select

    if not SHIPPED_MODEL.is_file():
        pytest.skip("no shipped selector")
    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "a.mrcs", rng.standard_normal((2, 32, 32)).astype(np.float32), apix=2.0,
              is_stack=True)
    write_mrc(tmp_path / "b.mrcs", rng.standard_normal((2, 40, 40)).astype(np.float32), apix=2.0,
              is_stack=True)
    cfg = SelectConfig(inputs=(str(tmp_path / "a.mrcs"), str(tmp_path / "b.mrcs")),
                       out=str(tmp_path / "sel"), device="cpu", progress=False)
    with pytest.raises(BiocnnError, match=r"different sizes \(32x32, 40x40\)"):
        run_select(cfg, log=lambda _: None)
    assert not (tmp_path / "sel").exists()
