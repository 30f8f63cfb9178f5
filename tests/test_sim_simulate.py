"""Data-set writer: STAR <-> image consistency, seeds, junk, atomic output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

import biocnn.sim.simulate as sim
from biocnn.errors import BiocnnError
from biocnn.sim.config import AverageSettings, SimConfig
from biocnn.sim.imaging import shift_spectra
from biocnn.sim.junk import JUNK_KINDS, junk_signals
from biocnn.sim.project import FourierProjector, euler_to_matrix, spectra_to_images
from biocnn.sim.structure import load_volume

DATA = Path(sim.__file__).parent / "data"


def _cfg(**kw: object) -> SimConfig:
    base = {"structures": [str(DATA / "1ubi.pdb"), str(DATA / "3mht.pdb")], "n_per_class": 6,
            "box": 32, "apix": 4.0, "max_shift": 3.0, "device": "cpu"}
    return SimConfig(**{**base, **kw})


def test_demo_structures_are_shipped() -> None:
    assert [p.name for p in sim.demo_structures()] == ["1r19.pdb", "1ubi.pdb", "3mht.pdb", "3o21.pdb"]
    assert (DATA / "README.md").read_text().count("PDB") >= 1


def test_star_parameters_reproduce_the_images(tmp_path: Path) -> None:
    """Re-project with the STAR angles and origins: matches the (noise-free) images."""
    cfg = _cfg(structures=[str(DATA / "1ubi.pdb")], n_per_class=8, snr=1e6, defocus_min=0.0,
               defocus_max=0.0, astigmatism=0.0, cs=0.0, bfactor=0.0, max_shift=4.0)
    sim.simulate_dataset(cfg, tmp_path / "out")
    star = starfile.read(tmp_path / "out" / "particles.star")["particles"]
    images = mrcfile.read(tmp_path / "out" / "1ubi" / "1ubi.mrcs")
    proj = FourierProjector(torch.from_numpy(load_volume(DATA / "1ubi.pdb", 4.0, 32).data))
    angles = torch.tensor(star[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    origin = torch.tensor(star[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()) / cfg.apix
    spectra = proj.slices(euler_to_matrix(angles.float()))
    for sign, better in ((-1.0, True), (1.0, False)):  # particle centre = box centre - origin
        expected = spectra_to_images(shift_spectra(spectra, sign * origin), 32).numpy()
        corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(images, expected,
                                                                          strict=True)]
        assert bool(min(corr) > 0.99) == better, corr


def test_star_round_trip_and_layout(tmp_path: Path) -> None:
    cfg = _cfg(junk=True, defocus_min=0.8, defocus_max=1.6, astigmatism=0.1)
    summary = sim.simulate_dataset(cfg, tmp_path / "out")
    out = summary.out
    assert sorted(p.name for p in out.iterdir()) == ["1ubi", "3mht", "junk", "particles.star",
                                                      "run.json"]
    text = (out / "particles.star").read_text()
    assert text.lstrip().startswith("# version 30001\n\ndata_optics")
    blocks = starfile.read(out / "particles.star")
    optics, parts = blocks["optics"], blocks["particles"]
    assert optics.loc[0, "rlnImagePixelSize"] == 4.0 and optics.loc[0, "rlnImageSize"] == 32
    assert optics.loc[0, "rlnImageDimensionality"] == 2 and optics.loc[0, "rlnVoltage"] == 300.0
    assert optics.loc[0, "rlnSphericalAberration"] == 2.7
    assert optics.loc[0, "rlnAmplitudeContrast"] == 0.1
    assert len(parts) == 18
    assert parts.groupby("rlnClassName")["rlnClassNumber"].first().to_dict() == {
        "1ubi": 1, "3mht": 2, "junk": 3}
    assert parts["rlnImageName"].iloc[7] == "000002@3mht/3mht.mrcs"
    assert (parts["rlnDefocusU"] >= parts["rlnDefocusV"]).all()
    assert (parts["rlnDefocusU"] - parts["rlnDefocusV"] <= 1000.0 + 1e-6).all()
    mean = (parts["rlnDefocusU"] + parts["rlnDefocusV"]) / 2
    assert mean.between(8000.0, 16000.0).all()
    shift = np.hypot(parts["rlnOriginXAngst"], parts["rlnOriginYAngst"])
    assert (shift <= 3.0 * 4.0 + 1e-6).all() and shift.iloc[:12].max() > 0
    assert parts["rlnAngleTilt"].between(0, 180).all()
    for name in ("1ubi", "3mht", "junk"):
        with mrcfile.open(out / name / f"{name}.mrcs") as mrc:
            assert mrc.data.shape == (6, 32, 32) and mrc.is_image_stack()
            assert float(mrc.voxel_size.x) == pytest.approx(4.0)
            assert np.isfinite(mrc.data).all()
    run = (out / "run.json").read_text()
    assert '"n_per_class": 6' in run and '"junk": true' in run


def _stack(path: Path) -> tuple[bytes, np.ndarray]:
    """Header without the time-stamped labels, and the data."""
    with mrcfile.open(path) as mrc:
        header = mrc.header.copy()
        header.label = b""
        return header.tobytes(), mrc.data.copy()


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    cfg = _cfg(junk=True, phase_flip=True, invert=True)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        sim.simulate_dataset(dataclasses.replace(cfg, seed=seed), tmp_path / name)
    star = [(tmp_path / d / "particles.star").read_text() for d in "abc"]
    assert star[0] == star[1] != star[2]
    for f in ("1ubi/1ubi.mrcs", "3mht/3mht.mrcs", "junk/junk.mrcs"):
        (ha, a), (hb, b), (_, c) = (_stack(tmp_path / d / f) for d in "abc")
        assert ha == hb and np.array_equal(a, b), f
        assert not np.array_equal(a, c), f


def test_junk_kinds() -> None:
    g = torch.Generator().manual_seed(0)
    particles = torch.rand(3, 24, 24, generator=g)
    signals, kinds = junk_signals(10, 24, particles, g)
    assert signals.shape == (10, 48, 48)
    assert {k: kinds.count(k) for k in JUNK_KINDS} == {"noise": 3, "ice": 3, "carbon": 2,
                                                       "overlap": 2}
    energy = signals[:, 12:36, 12:36].flatten(1).abs().sum(1)
    for e, kind in zip(energy, kinds, strict=True):
        assert (e == 0) == (kind == "noise")


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BiocnnError, match="does not exist"):
        sim.simulate_dataset(_cfg(structures=[str(DATA / "1ubi.pdb"), "missing.pdb"]),
                             tmp_path / "out")
    calls = []

    def failing_write(*args: object, **kw: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(sim, "write_mrc", failing_write)
    with pytest.raises(OSError, match="disk full"):
        sim.simulate_dataset(_cfg(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(BiocnnError, match=r"^out .*: is not empty \(use overwrite\)$"):
        sim.simulate_dataset(_cfg(n_per_class=2), out)
    assert (out / "keep.txt").exists()
    with pytest.raises(BiocnnError, match="not an earlier output"):  # not a simulate folder
        sim.simulate_dataset(_cfg(n_per_class=2), out, overwrite=True)
    assert (out / "keep.txt").exists()
    (out / "run.json").write_text("{}")  # an earlier simulate output: replaced
    sim.simulate_dataset(_cfg(n_per_class=2), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "particles.star").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"apix": 0.0}, r"^apix 0.0: must be > 0"),
        ({"apix": -1.0}, "^apix -1.0"),
        ({"snr": 0.0}, "^snr 0.0"),
        ({"box": 4}, "^box 4: must be at least 8"),
        ({"defocus_min": 3.0, "defocus_max": 1.0}, "^defocus_max 1.0: must be >= the minimum"),
        ({"names": ["a"]}, "^names a: 1 names for 2 structures"),
        ({"structures": [str(DATA / "1ubi.pdb")] * 2}, "duplicate"),
        ({"names": ["junk", "b"], "junk": True}, r"^junk True: .*taken .* \(use names\)"),
        ({"kind": "bogus"}, "^kind 'bogus': must be one of"),
        ({"map_apix": [1.0, 2.0, 3.0]}, "^map_apix 1.0,2.0,3.0: 3 pixel sizes"),
        ({"kind": "class-averages", "averages": AverageSettings(particles_min=0)},
         "particles_min"),
        ({"kind": "class-averages", "averages": AverageSettings(mask_max=1.5)}, "mask_min"),
        ({"names": ["ok", "../bad"]}, "folder name"),
    ],
)
def test_bad_settings_are_rejected(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(BiocnnError, match=match):
        sim.simulate_dataset(_cfg(**change), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_repeated_names_merge_structures_into_one_class(tmp_path: Path) -> None:
    cfg = _cfg(structures=[str(DATA / "1ubi.pdb"), str(DATA / "3mht.pdb")],
               names=["good", "good"], junk=True, n_per_class=7)
    summary = sim.simulate_dataset(cfg, tmp_path / "out")
    assert summary.class_names == ["good", "junk"] and summary.counts == {"good": 7, "junk": 7}
    assert summary.diameters["good"] == pytest.approx(87.0, abs=2.0)  # the larger of the two
    assert mrcfile.read(tmp_path / "out" / "good" / "good.mrcs").shape == (7, 32, 32)
    parts = starfile.read(tmp_path / "out" / "particles.star")["particles"]
    assert parts.groupby("rlnClassName").size().to_dict() == {"good": 7, "junk": 7}


def test_class_average_data_set_layout_and_seed(tmp_path: Path) -> None:
    cfg = SimConfig(kind="class-averages", n_per_class=6, box=32, seed=2,
                    structures=[str(DATA / "1ubi.pdb")], averages=AverageSettings(mass_max=3e5))
    for name in ("a", "b"):
        summary = sim.simulate_dataset(cfg, tmp_path / name)
    assert summary.class_names == ["good", "junk"]
    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir()) == ["good", "junk", "particles.star", "run.json"]
    parts = starfile.read(out / "particles.star")["particles"]
    assert parts.groupby("rlnClassName").size().to_dict() == {"good": 6, "junk": 6}
    assert parts["rlnImagePixelSize"].nunique() == 12  # drawn per class average
    assert (parts["biocnnParticles"].between(20, 1000)).all()
    junk = parts[parts["rlnClassName"] == "junk"]["biocnnKind"]
    assert len(set(junk)) == 6 and not {"particle", "crowded"} & set(junk)
    good = parts[parts["rlnClassName"] == "good"]["biocnnKind"]
    assert set(good) <= {"particle", "crowded"}
    for cls in ("good", "junk"):
        (_, a), (_, b) = (_stack(tmp_path / d / cls / f"{cls}.mrcs") for d in "ab")
        assert np.array_equal(a, b) and a.shape == (6, 32, 32) and np.isfinite(a).all()
        assert np.all(a[:, 0, 0] == 0) and np.all(a[:, -1, -1] == 0)  # outside the soft mask


@pytest.mark.slow
def test_class_averages_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    cfg = SimConfig(kind="class-averages", n_per_class=70, box=32, seed=4,
                    averages=AverageSettings(procedural_share=1.0, mass_max=2e5))
    threads = torch.get_num_threads()
    sim.simulate_dataset(cfg, tmp_path / "one")
    assert torch.get_num_threads() == threads  # rendering on one thread, restored after
    sim.simulate_dataset(dataclasses.replace(cfg, workers=2), tmp_path / "two")
    for cls in ("good", "junk"):  # 70 images: two seeded chunks per class
        (_, a), (_, b) = (_stack(tmp_path / d / cls / f"{cls}.mrcs") for d in ("one", "two"))
        assert np.array_equal(a, b), cls
    star = [(tmp_path / d / "particles.star").read_text() for d in ("one", "two")]
    assert star[0] == star[1]
