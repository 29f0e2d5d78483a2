"""EqGNNCalculator under ASE's protocol and drivers."""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE
from ase.stress import full_3x3_to_voigt_6_stress

from ase_eqgnn import EqGNNCalculator, build_model, save_model

FAMILIES = ["egnn", "painn", "tp"]
SMALL = {"egnn": dict(features=16, layers=2), "painn": dict(features=16, layers=2),
         "tp": dict(features=8, layers=2, l_max=1)}


def make_model(name, species=(1, 6, 8, 29), cutoff=4.0, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, species=list(species), cutoff=cutoff, **SMALL[name])
    with torch.no_grad():  # a non-trivial output layer so tests can fail
        model.scale.fill_(1.3)
        model.shift.fill_(-0.2)
        model.E0.copy_(torch.linspace(-1.0, -3.0, len(model.E0)))
    return model


def copper(repeat=(2, 2, 2), seed=0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def numerical_stress(atoms, d=1e-5):
    """Central differences of the energy under symmetric strain (ASE's sign convention)."""
    cell = atoms.cell.copy()
    volume = atoms.get_volume()
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * d / 2
                eps[b, a] += sign * d / 2
                atoms.set_cell(cell @ eps, scale_atoms=True)
                e.append(atoms.get_potential_energy())
            stress[a, b] = (e[0] - e[1]) / (2 * d) / volume
    atoms.set_cell(cell, scale_atoms=True)
    return full_3x3_to_voigt_6_stress(stress)


@pytest.mark.parametrize("name", FAMILIES)
def test_forces_and_stress_match_finite_differences(name):
    atoms = copper((1, 1, 2))
    atoms.calc = EqGNNCalculator(make_model(name), dtype="float64")
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # a non-trivial test
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    assert np.abs(forces - numeric).max() < 1e-6 * max(1.0, np.abs(forces).max())
    stress = atoms.get_stress()
    assert np.allclose(stress, numerical_stress(atoms), rtol=1e-6, atol=1e-8)
    assert np.isclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy(), atol=1e-10)
    assert atoms.get_potential_energy() == atoms.calc.results["free_energy"]


def test_molecule_without_cell_has_no_stress():
    atoms = molecule("CH3CH2OH")
    atoms.calc = EqGNNCalculator(make_model("painn"), dtype="float64")
    assert atoms.get_forces().shape == (9, 3)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    slab = copper()
    slab.pbc = (True, True, False)
    slab.calc = EqGNNCalculator(make_model("painn"), dtype="float64")
    slab.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        slab.get_stress()


def test_bad_inputs_raise_clear_errors():
    calc = EqGNNCalculator(make_model("painn", species=(1, 6, 8)))
    with pytest.raises(ValueError, match=r"Cu.*trained on: H, C, O"):
        calc.get_potential_energy(copper())
    atoms = molecule("H2O")
    atoms.positions[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calc.get_potential_energy(atoms)
    atoms = molecule("H2O")
    atoms.positions[2] = atoms.positions[1] + 0.01
    with pytest.raises(ValueError, match="overlapping atoms"):
        calc.get_potential_energy(atoms)
    with pytest.raises(ValueError, match="dtype"):
        EqGNNCalculator(make_model("painn"), dtype="float16")
    with pytest.raises(ValueError, match="model must be"):
        EqGNNCalculator(object())


def test_atoms_that_overlap_between_list_rebuilds_are_caught():
    # The list is not rebuilt (no atom moves more than skin / 2), but the pair ends up overlapping:
    # the check must not rely on the last rebuild alone.
    calc = EqGNNCalculator(make_model("painn", species=(1, 8)), dtype="float64", skin=2.0)
    atoms = Atoms("OH", positions=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    calc.get_potential_energy(atoms)
    atoms.positions[1, 0] = 0.05  # moved 0.95 Å < skin / 2 = 1 Å
    with pytest.raises(ValueError, match="overlapping atoms"):
        calc.get_potential_energy(atoms)
    assert calc.neighbors.builds == 1
    # Far apart at the rebuild: skipping the check is safe until the next rebuild, which happens
    # before the atoms can overlap.
    calc = EqGNNCalculator(make_model("painn", species=(1, 8)), dtype="float64", skin=0.5)
    atoms = Atoms("OH", positions=[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    calc.get_potential_energy(atoms)
    for x in np.linspace(1.8, 0.05, 8):
        atoms.positions[1, 0] = x
        if x < calc.min_distance:
            with pytest.raises(ValueError, match="overlapping atoms"):
                calc.get_potential_energy(atoms)
        else:
            calc.get_potential_energy(atoms)
    assert calc.neighbors.builds > 1
    # A min_distance raised between rebuilds is honoured at once.
    atoms.positions[1, 0] = 2.0
    calc.get_potential_energy(atoms)
    builds = calc.neighbors.builds
    calc.min_distance = 1.9
    atoms.positions[1, 0] = 1.85  # moved 0.15 Å < skin / 2: no rebuild
    with pytest.raises(ValueError, match="overlapping atoms"):
        calc.get_potential_energy(atoms)
    assert calc.neighbors.builds == builds


def test_verlet_reuse_gives_the_same_results_as_fresh_lists():
    model = make_model("painn")
    reuse = EqGNNCalculator(model, dtype="float64", skin=1.0)
    fresh = EqGNNCalculator(model, dtype="float64", skin=0.0)
    atoms = copper()
    rng = np.random.default_rng(0)
    for _ in range(6):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        f1 = reuse.get_forces(atoms)
        f2 = fresh.get_forces(atoms)
        assert np.allclose(f1, f2, atol=1e-12)
    assert reuse.neighbors.builds < 6


def test_batch_evaluation_matches_single_calls():
    model = make_model("tp")
    calc = EqGNNCalculator(model, dtype="float64")
    images = [copper(seed=1), molecule("CH3CH2OH"), copper((1, 1, 2), seed=2)]
    batch = calc.calculate_batch(images)
    for atoms, res in zip(images, batch):
        single = EqGNNCalculator(model, dtype="float64")
        assert np.isclose(res["energy"], single.get_potential_energy(atoms), atol=1e-10)
        assert np.allclose(res["forces"], single.get_forces(atoms), atol=1e-10)
        assert ("stress" in res) == bool(atoms.pbc.all())
        if atoms.pbc.all():
            assert np.allclose(res["stress"], single.get_stress(atoms), atol=1e-10)


def test_float32_agrees_with_float64_and_leaves_global_state_alone():
    default = torch.get_default_dtype()
    model = make_model("painn")
    atoms = copper()
    e64 = EqGNNCalculator(model, dtype="float64").get_potential_energy(atoms)
    f64 = EqGNNCalculator(model, dtype="float64").get_forces(atoms)
    calc32 = EqGNNCalculator(model, dtype="float32")
    assert abs(calc32.get_potential_energy(atoms) - e64) < 1e-5 * max(1.0, abs(e64))
    assert np.abs(calc32.get_forces(atoms) - f64).max() < 1e-4
    assert torch.get_default_dtype() == default
    assert next(model.parameters()).dtype == default  # the caller's model was not converted


def test_loads_from_checkpoint_path(tmp_path):
    model = make_model("egnn")
    path = tmp_path / "model.pt"
    save_model(model, path)
    atoms = copper()
    direct = EqGNNCalculator(model, dtype="float64").get_forces(atoms)
    loaded = EqGNNCalculator(str(path), dtype="float64").get_forces(atoms)
    assert np.array_equal(direct, loaded)


@pytest.mark.parametrize("name", FAMILIES)
def test_nve_md_conserves_energy(name):
    atoms = copper()
    atoms.calc = EqGNNCalculator(make_model(name, cutoff=4.0), dtype="float64")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=5)
    dyn.run(60)
    assert np.all(np.isfinite(energies))
    # a smooth potential and 1 fs: total energy conserved to a small fraction of the kinetic energy
    assert np.abs(np.array(energies) - e0).max() < 0.05 * max(atoms.get_kinetic_energy(), 1e-3)


def test_ase_drivers_run():
    model = make_model("painn")
    atoms = copper()
    atoms.calc = EqGNNCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    Langevin(atoms, 1.0 * units.fs, temperature_K=300, friction=0.02,
             rng=np.random.default_rng(2), fixcm=False).run(10)
    assert np.isfinite(atoms.get_potential_energy())
    for optimizer in (BFGS, FIRE):
        mol = molecule("H2O")
        mol.calc = EqGNNCalculator(model, dtype="float64")
        f_start = np.abs(mol.get_forces()).max()
        optimizer(mol, logfile=None).run(fmax=0.05, steps=300)
        assert np.abs(mol.get_forces()).max() < min(0.05, f_start) + 1e-12
    cell_atoms = copper((1, 1, 1))
    cell_atoms.calc = EqGNNCalculator(model, dtype="float64")
    BFGS(FrechetCellFilter(cell_atoms), logfile=None).run(fmax=0.02, steps=200)
    assert np.abs(cell_atoms.get_forces()).max() < 0.021
    assert np.abs(cell_atoms.get_stress()).max() * cell_atoms.get_volume() < 0.05


def test_isolated_atom_and_empty_graph():
    atoms = Atoms("Cu", positions=[[0, 0, 0]])
    calc = EqGNNCalculator(make_model("painn"), dtype="float64")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert np.isfinite(e)
    assert np.allclose(atoms.get_forces(), 0.0)


@pytest.mark.parametrize("name", FAMILIES)
def test_unpruned_skin_list_gives_the_pruned_results(name):
    """The CUDA-graph path evaluates the Verlet list as built (pairs up to cutoff + skin) on fixed
    buffers; the envelope must make that equal to the pruned list. Run eagerly here (no GPU)."""
    from dataclasses import replace

    from ase_eqgnn.cuda_graphs import CapturedPotential
    from ase_eqgnn.graph import AtomicGraph
    from ase_eqgnn.neighbors import VerletList

    model = make_model(name).double()
    for atoms in (copper(), molecule("biphenyl")):
        nl = VerletList(model.cutoff, skin=1.0)
        graph = AtomicGraph.from_atoms(atoms)
        args = (graph.positions, graph.cell[0], graph.pbc[0], graph.numbers)
        i, j, s = nl(*args, prune=False)
        stress = bool(atoms.pbc.all())
        fixed = CapturedPotential(model, replace(graph, edge_index=torch.stack([i, j]), shifts=s),
                                  stress, capture=False)
        rng = np.random.default_rng(1)
        for _ in range(3):
            moved = graph.positions + torch.as_tensor(rng.normal(scale=0.1, size=(len(atoms), 3)))
            pi, pj, ps = nl(moved, *args[1:])
            assert nl.builds == 1 and pi.numel() < i.numel()  # same list; some pairs beyond cutoff
            want = model(replace(graph, positions=moved, edge_index=torch.stack([pi, pj]), shifts=ps),
                         stress=stress)
            got = fixed(moved, graph.cell)
            assert set(got) == set(want)
            for key in want:
                assert torch.allclose(got[key], want[key], rtol=1e-10, atol=1e-10), key


def test_cuda_graph_options_are_checked():
    model = make_model("painn")
    with pytest.raises(ValueError, match="cuda_graphs"):
        EqGNNCalculator(model, cuda_graphs="always")
    with pytest.raises(ValueError, match="needs device='cuda'"):
        EqGNNCalculator(model, device="cpu", cuda_graphs=True)
    assert EqGNNCalculator(model, device="cpu", cuda_graphs="auto").cuda_graphs is False  # no GPU
