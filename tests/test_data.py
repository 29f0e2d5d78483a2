"""Dataset readers, bundled structures and the shipped reference data (EMT and OpenMM)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from ase_eqgnn.data import Frame, read_dataset, split_dataset
from ase_eqgnn.data.units import KCAL_PER_MOL_IN_EV, KJ_PER_MOL_IN_EV, NM_IN_ANGSTROM
from ase_eqgnn.structures import load_structure, structure_path

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "training" / "data"
MD17 = REPO.parent / "shared" / "data" / "md17" / "aspirin" / "train.npz"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------- units


def test_unit_constants_match_ase():
    from ase import units

    assert KJ_PER_MOL_IN_EV == pytest.approx(units.kJ / units.mol, rel=1e-7)
    assert KCAL_PER_MOL_IN_EV == pytest.approx(units.kcal / units.mol, rel=1e-7)
    assert KJ_PER_MOL_IN_EV == pytest.approx(0.0103642688, rel=1e-6)


# ----------------------------------------------------------------------------------------- npz


def test_npz_pos_layout_roundtrip(tmp_path):
    rng = _rng()
    pos = rng.normal(size=(4, 5, 3))
    z = np.array([6, 1, 1, 8, 7])
    e = rng.normal(size=(4, 1))  # MD17-style (frames, 1)
    f = rng.normal(size=(4, 5, 3))
    stress = rng.normal(size=(4, 3, 3))
    stress = 0.5 * (stress + stress.transpose(0, 2, 1))
    cell = np.diag([10.0, 11.0, 12.0])
    p = tmp_path / "d.npz"
    np.savez(p, pos=pos, atomic_numbers=z, energy=e, forces=f, cell=cell, pbc=np.array([True] * 3), stress=stress)
    frames = read_dataset(p)
    assert len(frames) == 4
    fr = frames[2]
    assert isinstance(fr, Frame) and fr.n_atoms == 5
    np.testing.assert_allclose(fr.positions, pos[2])
    np.testing.assert_array_equal(fr.numbers, z)
    assert fr.energy == pytest.approx(e[2, 0])
    np.testing.assert_allclose(fr.forces, f[2])
    np.testing.assert_allclose(fr.cell, cell)
    assert fr.pbc.all()
    s = stress[2]
    np.testing.assert_allclose(fr.stress, [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    assert fr.info["index"] == 2
    # index selection and unit override
    sel = read_dataset(p, index="1::2", energy_unit="kcal/mol", length_unit="nm")
    assert [x.info["index"] for x in sel] == [1, 3]
    np.testing.assert_allclose(sel[0].positions, pos[1] * NM_IN_ANGSTROM)
    assert sel[0].energy == pytest.approx(e[1, 0] * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(sel[0].forces, f[1] * KCAL_PER_MOL_IN_EV / NM_IN_ANGSTROM)
    np.testing.assert_allclose(sel[0].stress, read_dataset(p)[1].stress * KCAL_PER_MOL_IN_EV / 1000.0)
    # to_atoms keeps the labels
    atoms = fr.to_atoms()
    assert atoms.get_potential_energy() == pytest.approx(fr.energy)
    np.testing.assert_allclose(atoms.get_forces(), fr.forces)


def test_npz_sgdml_layout_is_kcal_per_mol(tmp_path):
    rng = _rng(1)
    R, z = rng.normal(size=(3, 4, 3)), np.array([6, 6, 1, 1])
    E, F = rng.normal(size=(3,)) * 100, rng.normal(size=(3, 4, 3))
    p = tmp_path / "md17.npz"
    np.savez(p, R=R, z=z, E=E, F=F)
    fr = read_dataset(p)
    assert fr[1].energy == pytest.approx(E[1] * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(fr[1].forces, F[1] * KCAL_PER_MOL_IN_EV)
    np.testing.assert_allclose(fr[1].positions, R[1])
    assert not fr[1].pbc.any()
    # the user says eV: no conversion
    assert read_dataset(p, energy_unit="eV")[1].energy == pytest.approx(E[1])
    # rMD17 key names, also kcal/mol
    q = tmp_path / "rmd17.npz"
    np.savez(q, coords=R, nuclear_charges=z, energies=E, forces=F)
    assert read_dataset(q)[2].energy == pytest.approx(E[2] * KCAL_PER_MOL_IN_EV)


@pytest.mark.skipif(not MD17.exists(), reason="shared MD17 data not present")
def test_md17_aspirin_shared_file():
    frames = read_dataset(MD17)
    assert len(frames) == 950
    assert frames[0].n_atoms == 21 and frames[0].forces.shape == (21, 3)
    assert not frames[0].pbc.any()
    with np.load(MD17) as d:
        assert frames[5].energy == pytest.approx(float(d["energy"][5, 0]))  # eV layout: no conversion


# ----------------------------------------------------------------------------------------- ASE


def _periodic_frames(n: int = 3):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = _rng(2)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, rng=rng)
        atoms.calc = EMT()
        res = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **res)
        out.append(atoms)
    return out


@pytest.mark.parametrize("name", ["d.extxyz", "d.xyz", "d.traj", "d.db"])
def test_ase_formats_roundtrip(tmp_path, name):
    import ase.io

    images = _periodic_frames()
    p = tmp_path / name
    ase.io.write(p, images)
    frames = read_dataset(p)
    assert len(frames) == 3
    for a, f in zip(images, frames):
        np.testing.assert_allclose(f.positions, a.positions, atol=1e-7)
        np.testing.assert_allclose(f.cell, a.cell.array, atol=1e-7)
        assert f.pbc.all()
        assert f.energy == pytest.approx(a.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(f.forces, a.get_forces(), atol=1e-7)
        np.testing.assert_allclose(f.stress, a.get_stress(), atol=1e-8)
    last = read_dataset(p, index=-1)
    assert len(last) == 1 and last[0].energy == pytest.approx(images[-1].get_potential_energy(), abs=1e-7)
    assert [f.info["index"] for f in read_dataset(p, index="1:")] == [1, 2]
    kcal = read_dataset(p, energy_unit="kcal/mol")
    assert kcal[0].energy == pytest.approx(frames[0].energy * KCAL_PER_MOL_IN_EV)


# ----------------------------------------------------------------------------------------- mdtraj


def _ala2_traj(n_frames: int = 3):
    import mdtraj

    ref = mdtraj.load(str(structure_path("ala2")))
    xyz = ref.xyz + _rng(3).normal(scale=0.01, size=(n_frames, ref.n_atoms, 3)).astype(np.float32)
    return mdtraj.Trajectory(xyz, ref.topology)


@pytest.mark.parametrize("ext", [".h5", ".dcd"])
def test_mdtraj_plus_energies_roundtrip(tmp_path, ext):
    traj = _ala2_traj()
    p = tmp_path / f"t{ext}"
    traj.save(str(p))
    e, f = np.array([1.0, 2.0, 3.0]), _rng(4).normal(size=(3, 22, 3))
    ep = tmp_path / "e.npz"
    np.savez(ep, energy=e, forces=f, pos=traj.xyz * NM_IN_ANGSTROM)
    top = None if ext == ".h5" else structure_path("ala2")
    frames = read_dataset(p, energies=ep, topology=top)
    assert len(frames) == 3
    np.testing.assert_allclose(frames[1].positions, traj.xyz[1] * NM_IN_ANGSTROM, atol=1e-5)
    assert frames[1].energy == pytest.approx(2.0)
    np.testing.assert_allclose(frames[1].forces, f[1])
    assert frames[0].numbers.tolist()[:6] == [6, 1, 1, 1, 6, 8]
    # energies given in kJ/mol
    kj = read_dataset(p, energies=ep, topology=top, energy_unit="kJ/mol", index=2)
    assert kj[0].energy == pytest.approx(3.0 * KJ_PER_MOL_IN_EV)
    # positions only
    assert read_dataset(p, topology=top)[0].energy is None


def test_mdtraj_errors(tmp_path):
    traj = _ala2_traj()
    p = tmp_path / "t.dcd"
    traj.save(str(p))
    with pytest.raises(ValueError, match="topology"):
        read_dataset(p)
    h5 = tmp_path / "t.h5"
    traj.save(str(h5))
    bad = tmp_path / "bad.npz"
    np.savez(bad, energy=np.zeros(2), forces=np.zeros((2, 22, 3)))
    with pytest.raises(ValueError, match=r"bad\.npz.*'energy'.*2 frames"):
        read_dataset(h5, energies=bad)
    np.savez(bad, energy=np.zeros(3), forces=np.zeros((3, 21, 3)))
    with pytest.raises(ValueError, match=r"'forces'.*21 atoms"):
        read_dataset(h5, energies=bad)
    np.savez(bad, energy=np.zeros(3))
    with pytest.raises(ValueError, match=r"bad\.npz.*missing field 'forces'"):
        read_dataset(h5, energies=bad)
    np.savez(bad, energy=np.zeros(3), forces=np.zeros((3, 22, 3)), pos=traj.xyz * 10 + 0.5)
    with pytest.raises(ValueError, match="do not belong"):
        read_dataset(h5, energies=bad)
    f = np.zeros((3, 22, 3))
    f[1, 4, 2] = np.nan
    np.savez(bad, energy=np.zeros(3), forces=f)
    with pytest.raises(ValueError, match=r"'forces'.*non-finite.*frame 1"):
        read_dataset(h5, energies=bad)
    with pytest.raises(ValueError, match="length_unit"):
        read_dataset(h5, length_unit="nm")


# ----------------------------------------------------------------------------------------- errors


def _good_pos_layout(n_frames: int = 3, n_atoms: int = 4) -> dict:
    rng = _rng(5)
    return dict(pos=rng.normal(size=(n_frames, n_atoms, 3)), atomic_numbers=np.ones(n_atoms, dtype=int),
                energy=rng.normal(size=n_frames), forces=rng.normal(size=(n_frames, n_atoms, 3)))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.pop("forces"), r"missing field\(s\) 'forces'"),
        (lambda d: d.update(energy=np.zeros(2)), r"'energy' has 2 frames"),
        (lambda d: d.update(forces=np.zeros((3, 5, 3))), r"'forces' has 5 atoms"),
        (lambda d: d.update(forces=np.zeros((2, 4, 3))), r"'forces' has 2 frames"),
        (lambda d: d.update(atomic_numbers=np.ones(3, dtype=int)), r"'atomic_numbers' has 3 atoms"),
        (lambda d: d.update(atomic_numbers=np.zeros(4, dtype=int)), r"'atomic_numbers'.*not atomic numbers"),
        (lambda d: d["energy"].__setitem__(1, np.nan), r"'energy' has 1 non-finite.*frame 1"),
        (lambda d: d["pos"].__setitem__((2, 0, 0), np.inf), r"'pos' has 1 non-finite.*frame 2"),
        (lambda d: d.update(energy=np.zeros((3, 2))), r"'energy' must have shape"),
        (lambda d: d.update(pbc=np.array([True, True, True])), r"periodic along axis 0 but its cell vector is zero"),
    ],
)
def test_npz_errors_name_file_and_field(tmp_path, change, match):
    d = _good_pos_layout()
    change(d)
    p = tmp_path / "broken.npz"
    np.savez(p, **d)
    with pytest.raises(ValueError, match=r"broken\.npz.*" + match):
        read_dataset(p)


def test_misc_errors(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, foo=np.zeros(3))
    with pytest.raises(ValueError, match="unrecognised npz layout"):
        read_dataset(p)
    np.savez(p, **_good_pos_layout())
    with pytest.raises(ValueError, match="unknown energy unit"):
        read_dataset(p, energy_unit="furlongs")
    with pytest.raises(ValueError, match="out of range"):
        read_dataset(p, index=7)
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing.extxyz")
    with pytest.raises(ValueError, match="only apply to mdtraj"):
        read_dataset(p, energies=p)


# ----------------------------------------------------------------------------------------- splits


def test_split_dataset():
    frames = list(range(100))
    tr, va = split_dataset(frames, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90
    assert sorted(tr + va) == frames and not set(tr) & set(va)
    assert va == sorted(va)
    assert split_dataset(frames, 0.1, seed=3) == (tr, va)
    assert split_dataset(frames, 0.1, seed=4)[1] != va
    tr, va = split_dataset(frames, 0.2, seed=0, contiguous=True)
    assert va == list(range(80, 100)) and tr == list(range(80))
    assert len(split_dataset(frames[:5], 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match="valid_fraction"):
        split_dataset(frames, 1.0, seed=0)


# ----------------------------------------------------------------------------------------- structures

ALA2_NAMES = [
    ("ACE", "CH3"), ("ACE", "H1"), ("ACE", "H2"), ("ACE", "H3"), ("ACE", "C"), ("ACE", "O"),
    ("ALA", "N"), ("ALA", "H"), ("ALA", "CA"), ("ALA", "HA"), ("ALA", "C"), ("ALA", "O"),
    ("ALA", "CB"), ("ALA", "HB1"), ("ALA", "HB2"), ("ALA", "HB3"),
    ("NME", "N"), ("NME", "H"), ("NME", "C"), ("NME", "H1"), ("NME", "H2"), ("NME", "H3"),
]


def test_bundled_structures():
    import mdtraj

    t = mdtraj.load(str(structure_path("ala2")))
    assert t.n_atoms == 22
    assert [r.name for r in t.topology.residues] == ["ACE", "ALA", "NME"]
    assert [(a.residue.name, a.name) for a in t.topology.atoms] == ALA2_NAMES
    atoms = load_structure("ala2")
    assert atoms.get_chemical_formula() == "C6H12N2O2" and not atoms.pbc.any()
    np.testing.assert_allclose(atoms.positions, t.xyz[0] * NM_IN_ANGSTROM, atol=1e-3)
    c = mdtraj.load(str(structure_path("chignolin")))
    assert c.topology.to_fasta()[0] == "GYDPETGTWG"
    assert c.n_atoms == 138 and len(load_structure("chignolin")) == 138
    with pytest.raises(ValueError, match="ala2, chignolin"):
        structure_path("ubiquitin")


# ----------------------------------------------------------------------------------------- shipped data

OPENMM_SETS = {"ala2_train": 22, "ala2_test": 22, "chignolin_train": 138, "chignolin_test": 138}


@pytest.mark.parametrize("name, n_atoms", sorted(OPENMM_SETS.items()))
def test_shipped_openmm_data_loads(name, n_atoms):
    frames = read_dataset(DATA / f"{name}.h5", energies=DATA / f"{name}.npz")
    assert len(frames) >= 100 and all(f.n_atoms == n_atoms for f in frames)
    with np.load(DATA / f"{name}.npz") as d:
        assert d["pos"].shape == d["forces"].shape == (len(frames), n_atoms, 3)
        assert d["energy"].shape == (len(frames),)
        npz_frames = read_dataset(DATA / f"{name}.npz")
    np.testing.assert_allclose(npz_frames[-1].positions, frames[-1].positions, atol=1e-5)
    assert npz_frames[-1].energy == frames[-1].energy
    e = np.array([f.energy for f in frames])
    assert np.all(np.isfinite(e)) and 0.05 < e.std() < 2.0  # eV: thermal fluctuations at 300 K


def test_train_and_test_are_different_runs():
    with np.load(DATA / "ala2_train.npz") as a, np.load(DATA / "ala2_test.npz") as b:
        assert int(a["seed"]) != int(b["seed"])
        assert not np.allclose(a["pos"][0], b["pos"][0])


@pytest.mark.parametrize("name", ["cu_emt", "cuni_emt"])
def test_shipped_emt_data_matches_fresh_emt(name):
    from ase.calculators.emt import EMT

    path = DATA / f"{name}.extxyz"
    frames = read_dataset(path)
    assert len(frames) >= 50 and all(f.n_atoms == 32 and f.pbc.all() for f in frames)
    stresses = np.array([f.stress for f in frames])
    assert stresses.std(axis=0).min() > 1e-4  # strained cells: every stress component varies
    for f in frames[:: len(frames) // 3][:3]:
        atoms = f.to_atoms()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(f.energy, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), f.forces, atol=1e-6)
        np.testing.assert_allclose(atoms.get_stress(), f.stress, atol=1e-7)


@pytest.mark.parametrize("name, frames", [("ala2_train", (0, 1234)), ("chignolin_test", (0, 77))])
def test_shipped_openmm_data_matches_fresh_openmm(name, frames):
    """Recompute energies/forces with OpenMM (amber14 + OBC2, Reference platform) from the bundled PDB."""
    openmm = pytest.importorskip("openmm")
    import mdtraj
    from openmm import app, unit

    pdb = app.PDBFile(str(structure_path(name.split("_")[0])))
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    traj = mdtraj.load(str(DATA / f"{name}.h5"))
    with np.load(DATA / f"{name}.npz") as d:
        energy, forces = d["energy"], d["forces"]
    for k in frames:
        ctx.setPositions(traj.xyz[k].astype(np.float64))
        st = ctx.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_IN_EV
        f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        f = np.asarray(f) * KJ_PER_MOL_IN_EV / NM_IN_ANGSTROM
        # generated on the CPU platform (mixed precision); measured deviations are ~1e-6 eV(/Å)
        assert e == pytest.approx(energy[k], abs=5e-5)
        np.testing.assert_allclose(f, forces[k], atol=5e-5)
