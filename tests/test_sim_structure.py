"""Density volumes from PDB / mmCIF (plain and gzipped) and MRC maps; bad structure input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest

from biocnn.errors import BiocnnError
from biocnn.sim.structure import load_volume


def _toy_structure(waters: bool = True) -> gemmi.Structure:
    """Ten carbons and a sulfur spread over ~20 Å, plus two waters far away."""
    rng = np.random.default_rng(0)
    st = gemmi.Structure()
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    atoms = [("C", p) for p in rng.uniform(-10, 10, (10, 3)) + 30] + [("S", np.array([35, 30, 30]))]
    for i, (el, pos) in enumerate(atoms, start=1):
        res = gemmi.Residue()
        res.name, res.seqid = "ALA", gemmi.SeqId(str(i))
        atom = gemmi.Atom()
        atom.name, atom.element, atom.occ, atom.b_iso = el, gemmi.Element(el), 1.0, 20.0
        atom.pos = gemmi.Position(*pos)
        res.add_atom(atom)
        chain.add_residue(res)
    if waters:
        for i, x in enumerate((55.0, 5.0), start=100):
            res = gemmi.Residue()
            res.name, res.seqid, res.het_flag = "HOH", gemmi.SeqId(str(i)), "H"
            atom = gemmi.Atom()
            atom.name, atom.element, atom.occ, atom.b_iso = "O", gemmi.Element("O"), 1.0, 20.0
            atom.pos = gemmi.Position(x, 30, 30)
            res.add_atom(atom)
            chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


@pytest.fixture
def toy_pdb(tmp_path: Path) -> Path:
    path = tmp_path / "toy.pdb"
    _toy_structure().write_pdb(str(path))
    return path


def _centroid(vol: np.ndarray) -> np.ndarray:
    w = np.clip(vol, 0, None)
    idx = np.indices(vol.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1) / w.sum()


def test_atomic_model_is_centred_on_its_centre_of_mass_without_waters(toy_pdb: Path) -> None:
    vol = load_volume(toy_pdb, apix=2.0, box=32)
    assert vol.data.shape == (32, 32, 32) and vol.data.dtype == np.float32
    st = _toy_structure(waters=False)
    com = np.array(st[0].calculate_center_of_mass().tolist())
    assert vol.diameter == pytest.approx(
        2 * (max(np.linalg.norm(np.array(c.atom.pos.tolist()) - com) for c in st[0].all()) + 2.0),
        abs=0.01,  # PDB coordinates are rounded to 1e-3 Å
    )
    # electron density weights differ from masses, so the density centroid is near, not at, 16
    assert np.abs(_centroid(vol.data) - 16).max() < 1.0
    wet = load_volume(toy_pdb, apix=2.0, box=32, keep_waters=True)
    assert wet.diameter > vol.diameter + 20  # the far-away waters were ignored by default


def test_mmcif_and_gzip_give_the_same_volume(toy_pdb: Path, tmp_path: Path) -> None:
    cif = tmp_path / "toy.cif"
    _toy_structure().make_mmcif_document().write_file(str(cif))
    gz = tmp_path / "toy.cif.gz"
    with open(cif, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    ref = load_volume(toy_pdb, apix=2.0, box=24).data
    for path in (cif, gz):
        vol = load_volume(path, apix=2.0, box=24).data
        assert np.abs(vol - ref).max() < 1e-3 * ref.max()  # PDB rounds coordinates to 1e-3 Å


def test_map_is_resampled_to_the_requested_pixel_size(tmp_path: Path) -> None:
    n = 48
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blob = np.exp(-((x - 6.0) ** 2 + y**2 + z**2) / (2 * 3.0**2)).astype(np.float32)
    path = tmp_path / "blob.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(blob)
        mrc.voxel_size = 1.0
    vol = load_volume(path, apix=2.0, box=32)
    assert vol.data.shape == (32, 32, 32)
    # the blob at x = +6 Å sits 3 voxels right of the centre; the integral is preserved
    assert np.allclose(_centroid(vol.data), [16, 16, 19], atol=0.1)
    assert vol.data.sum() * 8 == pytest.approx(blob.sum(), rel=0.02)


def test_box_smaller_than_the_molecule_warns_with_the_needed_size(toy_pdb: Path) -> None:
    with pytest.warns(UserWarning, match=r"use --box >= \d+"):
        vol = load_volume(toy_pdb, apix=2.0, box=8)
    assert vol.data.shape[0] == int(np.ceil(vol.diameter / 2.0)) > 8


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.pdb", b"", "contains no atoms"),
        ("text.pdb", b"this is not a structure\n", "contains no atoms"),
        ("bad.cif", b"garbage", "cannot read structure"),
        ("notes.txt", b"ATOM", "unknown format"),
        ("bad.mrc", b"\x00" * 100, "cannot read map"),
    ],
)
def test_unreadable_structures_raise_one_line_errors(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BiocnnError, match=match) as info:
        load_volume(path, apix=2.0, box=32)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_missing_file_and_2d_map_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(BiocnnError, match="does not exist"):
        load_volume(tmp_path / "nope.pdb", apix=2.0, box=32)
    flat = tmp_path / "image.mrc"
    with mrcfile.new(flat) as mrc:
        mrc.set_data(np.ones((16, 16), dtype=np.float32))
    with pytest.raises(BiocnnError, match="not a 3D volume"):
        load_volume(flat, apix=2.0, box=32)
