"""Procedural pseudo-atomic models: mass, size, shapes, rendering; map/PDB realism fixes."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biocnn.errors import BiocnnError
from biocnn.sim.average_dataset import load_atoms
from biocnn.sim.procedural import (
    MODEL_KINDS,
    PROTEIN_DENSITY,
    atoms_volume,
    make_model,
    project_atoms,
    random_model,
)
from biocnn.sim.project import FourierProjector, euler_to_matrix, spectra_to_images
from biocnn.sim.structure import load_volume, read_atomic_model

DATA = Path(__file__).resolve().parents[1] / "biocnn" / "sim" / "data"


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(MODEL_KINDS), st.floats(5e4, 4e6), st.integers(0, 2**31))
def test_protein_beads_carry_the_requested_mass(kind: str, mass: float, seed: int) -> None:
    m = make_model(kind, mass, np.random.default_rng(seed))
    assert m.mass == mass and m.kind == kind
    protein = m.weight[: m.n_protein]  # lipid/detergent beads follow the protein
    assert float(protein.sum()) == pytest.approx(mass, rel=1e-4)
    assert kind == "membrane" or m.n_protein == len(m.weight)
    # centred on the protein's centre of mass
    centre = (m.xyz[: m.n_protein] * protein[:, None]).sum(0) / protein.sum()
    assert float(centre.norm()) < 0.05 * m.diameter
    # no smaller than a sphere of that much protein, and a macromolecule's size at most
    sphere = 2 * (3 * mass / PROTEIN_DENSITY / (4 * math.pi)) ** (1 / 3)
    assert 0.95 * sphere < m.diameter < 8 * sphere


def test_same_seed_same_model_and_kinds_differ() -> None:
    a = random_model(np.random.default_rng(4))
    b = random_model(np.random.default_rng(4))
    assert torch.equal(a.xyz, b.xyz) and a.kind == b.kind
    kinds = {random_model(np.random.default_rng(s)).kind for s in range(60)}
    assert kinds == set(MODEL_KINDS)


def test_elongated_models_are_elongated_and_rings_have_a_hole() -> None:
    rng = np.random.default_rng(0)
    rod = make_model("elongated", 5e5, rng)
    ev = torch.linalg.eigvalsh(torch.cov(rod.xyz.T))
    assert float(ev[-1] / ev[0]) > 4
    ring = make_model("ring", 5e5, rng)
    radial = ring.xyz[:, :2].norm(dim=1)
    assert int((radial < 0.15 * float(radial.max())).sum()) < 0.01 * len(radial)


def test_membrane_models_have_a_low_contrast_belt() -> None:
    m = make_model("membrane", 2e5, np.random.default_rng(1))
    protein, lipid = m.weight[: m.n_protein], m.weight[m.n_protein :]
    assert len(lipid) > 50 and float(protein.sum()) == pytest.approx(2e5, rel=1e-4)
    # lipid/detergent: a quarter of protein contrast per volume, not counted in the mass
    assert float(lipid.mean()) < 0.5 * float(protein.mean())
    assert float(lipid.sum()) > 0.05 * m.mass


def test_volume_projection_equals_direct_projection_and_is_fast() -> None:
    m = make_model("multidomain", 3e5, np.random.default_rng(2))
    apix = m.diameter / 40
    start = time.perf_counter()
    vol = atoms_volume(m, apix, 64)
    elapsed = time.perf_counter() - start
    assert float(vol.sum()) == pytest.approx(float(m.weight.sum()), rel=1e-4)
    assert elapsed < 0.5  # a few ms on an idle core; generous for shared CI machines
    rot = euler_to_matrix(torch.tensor([[10.0, 70.0, -40.0], [100.0, 20.0, 5.0]]))
    a = FourierProjector(vol).project(rot)
    b = spectra_to_images(project_atoms(m, rot, apix, 64), 64)
    for x, y in zip(a, b, strict=True):
        assert np.corrcoef(x.numpy().ravel(), y.numpy().ravel())[0, 1] > 0.995


def test_projection_shift_moves_the_centre_of_mass() -> None:
    m = make_model("globular", 1e5, np.random.default_rng(3))
    rot = euler_to_matrix(torch.zeros(1, 3))
    img = spectra_to_images(project_atoms(m, rot, 2.0, 64, torch.tensor([[5.0, -3.0]])), 64)[0]
    idx = torch.arange(64, dtype=torch.float32) - 32
    w = img.clamp_min(0)
    cx = float((w.sum(0) * idx).sum() / w.sum())
    cy = float((w.sum(1) * idx).sum() / w.sum())
    assert (cx, cy) == pytest.approx((5.0, -3.0), abs=0.3)


def _map(path: Path, data: np.ndarray, voxel: float | None) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.astype(np.float32))
        if voxel is not None:
            mrc.voxel_size = voxel
    return path


def _blob_map(offset: float) -> np.ndarray:
    z, y, x = np.indices((40, 40, 40)) - 20
    return offset + np.exp(-(x**2 + y**2 + (z - 3) ** 2) / 18.0)


def test_flat_map_background_leaves_no_box_outline(tmp_path: Path) -> None:
    rot = euler_to_matrix(torch.tensor([[30.0, 50.0, 20.0]]))
    proj = []
    for offset in (5.0, 0.0):
        vol = load_volume(_map(tmp_path / f"m{offset}.mrc", _blob_map(offset), 2.0), 2.0, 40)
        proj.append(FourierProjector(torch.from_numpy(vol.data)).project(rot)[0])
    corners = torch.cat([proj[0][:6, :6].flatten(), proj[0][-6:, -6:].flatten(),
                         proj[0][:6, -6:].flatten(), proj[0][-6:, :6].flatten()])
    assert float(corners.abs().max()) < 0.01 * float(proj[0].max())
    assert torch.allclose(proj[0], proj[1], atol=1e-4 * float(proj[1].max()))


def test_map_pixel_size_override(tmp_path: Path) -> None:
    path = _map(tmp_path / "nohdr.mrc", _blob_map(0.0), None)
    with pytest.raises(BiocnnError, match=r"no voxel size in its header \(use map_apix\)"):
        load_volume(path, 2.0, 40)
    fine = load_volume(path, 2.0, 40, map_apix=1.0)
    coarse = load_volume(path, 2.0, 40, map_apix=2.0)
    assert fine.diameter == pytest.approx(coarse.diameter / 2, rel=0.05)
    atoms = load_atoms(path, map_apix=2.0)
    assert float(atoms.xyz[:, 2].mul(atoms.weight).sum() / atoms.weight.sum()) == pytest.approx(
        0.0, abs=1e-3)


def _pdb_with_dummies(path: Path) -> Path:
    st_ = gemmi.read_structure(str(DATA / "1ubi.pdb"))
    st_.remove_waters()
    chain = gemmi.Chain("D")
    for i in range(30):
        res = gemmi.Residue()
        res.name, res.seqid, res.het_flag = "DUM", gemmi.SeqId(str(i + 1)), "H"
        atom = gemmi.Atom()
        atom.name, atom.element, atom.occ = "O", gemmi.Element("O"), 1.0
        atom.pos = gemmi.Position(100.0 + 3 * (i % 6), 100.0 + 3 * (i // 6), 15.0)
        res.add_atom(atom)
        chain.add_residue(res)
    st_[0].add_chain(chain)
    st_.setup_entities()
    st_.write_pdb(str(path))
    return path


def test_opm_dummy_atoms_are_dropped_with_a_warning(tmp_path: Path) -> None:
    path = _pdb_with_dummies(tmp_path / "opm.pdb")
    with pytest.warns(UserWarning, match="dropped 30 DUM"):
        st_ = read_atomic_model(path)
    assert all(r.name != "DUM" for ch in st_[0] for r in ch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_dum = load_volume(path, 4.0, 32)
    plain = load_volume(DATA / "1ubi.pdb", 4.0, 32)
    assert with_dum.diameter == pytest.approx(plain.diameter)
    assert np.allclose(with_dum.data, plain.data, atol=1e-5 * plain.data.max())
