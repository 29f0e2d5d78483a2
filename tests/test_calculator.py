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
from conftest import maxwell_boltzmann
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
    maxwell_boltzmann(atoms, 300, np.random.default_rng(0))
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
    maxwell_boltzmann(atoms, 300, np.random.default_rng(1))
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


# ------------------------------------------------------------------------------------------------
# No input kills the process or gives a silently wrong answer
# ------------------------------------------------------------------------------------------------
def test_empty_structures_have_zero_energy_and_empty_arrays():
    calc = EqGNNCalculator(make_model("painn"))
    for atoms in (Atoms(), Atoms(cell=np.eye(3) * 4.0, pbc=True), Atoms(cell=[3, 3, 0], pbc=[1, 1, 0])):
        atoms.calc = calc
        assert atoms.get_potential_energy() == 0.0
        assert atoms.get_forces().shape == (0, 3)
        assert atoms.get_potential_energies().shape == (0,)
        if atoms.pbc.all():
            assert np.array_equal(atoms.get_stress(), np.zeros(6))
        else:
            with pytest.raises(PropertyNotImplementedError):
                atoms.get_stress()
    images = [Atoms(), copper((1, 1, 2), seed=3), Atoms(cell=np.eye(3) * 4.0, pbc=True), molecule("H2O")]
    batch = calc.calculate_batch(images)
    assert batch[0]["energy"] == 0.0 and batch[0]["forces"].shape == (0, 3) and "stress" not in batch[0]
    assert np.array_equal(batch[2]["stress"], np.zeros(6))
    for k in (1, 3):
        single = EqGNNCalculator(make_model("painn"))
        assert np.isclose(batch[k]["energy"], single.get_potential_energy(images[k]), atol=1e-5)
        assert np.allclose(batch[k]["forces"], single.get_forces(images[k]), atol=1e-5)
    assert calc.calculate_batch([Atoms(), Atoms()])[1]["forces"].shape == (0, 3)


_FAR_ATOM_SCRIPT = r"""
import numpy as np, torch
from ase.build import molecule
from ase_eqgnn import EqGNNCalculator, build_model
torch.manual_seed(0)
model = build_model("painn", species=[1, 6, 8], cutoff=4.0, features=16, layers=2)
mol = molecule("CH3CH2OH")
far = mol.copy()
far.positions[0] += [1e6, 0, 0]  # vesin-torch 0.6 dies with SIGFPE here
calc = EqGNNCalculator(model, neighbor_backend="auto")
forces = calc.get_forces(far)
alone = mol.copy()
del alone[0]
reference = EqGNNCalculator(model, dtype="float64").get_forces(alone)
assert np.abs(forces[1:] - reference).max() < 1e-4, np.abs(forces[1:] - reference).max()
assert np.abs(forces[0]).max() < 1e-6  # an isolated atom feels nothing
print("survived")
"""


def test_a_cluster_with_an_atom_1e6_angstrom_away_is_evaluated():
    # In a subprocess: a crash there fails this test instead of killing pytest.
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _FAR_ATOM_SCRIPT], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("kind", ["bulk", "molecule", "slab", "wire"])
def test_float32_results_do_not_depend_on_where_the_system_sits(kind):
    model = make_model("painn")
    atoms = molecule("CH3CH2OH") if kind == "molecule" else copper()
    if kind in ("slab", "wire"):
        atoms.pbc = (True, True, False) if kind == "slab" else (False, True, False)
    reference = EqGNNCalculator(model, dtype="float64").get_forces(atoms)
    calc = EqGNNCalculator(model)
    unshifted = calc.get_forces(atoms)
    assert np.abs(unshifted - reference).max() < 1e-5
    for shift in (1e3, 1e6):
        moved = atoms.copy()
        moved.positions += shift * np.array([1.0, -0.7, 0.4])
        forces = calc.get_forces(moved)
        # float32 round-off of the unshifted system (~1e-6 here), not 0.06 Å of float32 at 1e6 Å
        assert np.abs(forces - reference).max() < 1e-5, (shift, np.abs(forces - reference).max())
        if atoms.pbc.all():
            assert np.allclose(calc.get_stress(moved), EqGNNCalculator(model, dtype="float64")
                               .get_stress(atoms), atol=1e-6)


def test_verlet_list_is_reused_far_from_the_origin_while_atoms_cross_the_cell():
    model = make_model("painn")
    atoms = copper()
    atoms.positions += [1e6, 2e5, -3e5]  # every atom outside the cell
    reuse = EqGNNCalculator(model, skin=1.0)
    fresh = EqGNNCalculator(model, dtype="float64", skin=0.0)
    rng = np.random.default_rng(3)
    drift = rng.normal(scale=0.04, size=3)
    for _ in range(12):  # the whole crystal drifts, so atoms cross cell faces
        atoms.positions += drift + rng.normal(scale=0.02, size=atoms.positions.shape)
        assert np.abs(reuse.get_forces(atoms) - fresh.get_forces(atoms)).max() < 1e-5
    assert reuse.neighbors.builds < 6
    # a molecule drifting far from the origin: reused list, centred positions
    mol = molecule("CH3CH2OH")
    mol.positions += 1e6
    reuse = EqGNNCalculator(model, skin=1.0)
    for _ in range(8):
        mol.positions += 0.03
        assert np.abs(reuse.get_forces(mol) - fresh.get_forces(mol)).max() < 1e-5
    assert reuse.neighbors.builds < 4


def test_tiny_periodic_cells_and_thin_non_periodic_cells():
    model = make_model("painn", cutoff=4.0)
    # a wire with a 1.1 Å period (each atom meets ~7 images of itself) against a 5x longer cell
    wire = Atoms("Cu", positions=[[0.3, 0.0, 0.0]], cell=[1.1, 10.0, 10.0], pbc=[True, False, False])
    long = wire.repeat((5, 1, 1))
    calc = EqGNNCalculator(model, dtype="float64", min_distance=0.5)
    assert np.isclose(5 * calc.get_potential_energy(wire), calc.get_potential_energy(long), rtol=1e-10)
    # a cell thinner than the cutoff along a non-periodic direction is ignored there
    slab = copper((2, 2, 1))
    slab.pbc = (True, True, False)
    slab.positions[:, 2] += np.linspace(0.0, 6.0, len(slab))
    thin = slab.copy()
    thin.cell[2] = [0.0, 0.0, 0.4]
    assert np.allclose(calc.get_forces(thin), EqGNNCalculator(model, dtype="float64").get_forces(slab),
                       atol=1e-10)
    # a periodic cell far thinner than the cutoff: one clear error, not a memory blow-up
    dust = Atoms("Cu2", positions=[[0, 0, 0], [0.005, 0.005, 0.005]], cell=np.eye(3) * 0.01, pbc=True)
    with pytest.raises(ValueError, match="thinner than the cutoff"):
        calc.get_potential_energy(dust)


def test_degenerate_and_out_of_range_structures_get_one_line_errors():
    calc = EqGNNCalculator(make_model("painn"))
    with pytest.raises(ValueError, match="singular"):
        calc.get_potential_energy(Atoms("Cu", pbc=True))  # periodic without a cell
    with pytest.raises(ValueError, match="from the origin"):
        calc.get_potential_energy(Atoms("Cu2", positions=[[0, 0, 0], [1e15, 0, 0]]))
    cell = copper()
    cell.cell[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        calc.get_potential_energy(cell)
    with pytest.raises(ValueError, match="singular"):
        calc.calculate_batch([copper(), Atoms("Cu", pbc=True)])


@pytest.mark.parametrize("option, values", [
    ("min_distance", [float("nan"), float("inf"), -0.1, "close"]),
    ("skin", [float("nan"), -1.0, float("inf")]),
    ("domain_fraction", [0.0, -0.5, 1.5, float("nan"), "most"]),
    ("domain_check", ["maybe", None, True]),
    ("num_threads", [0, -2, 1.5, True, "all"]),
    ("keep_freed_memory", ["yes"]),
])
def test_bad_options_are_refused_by_name(option, values):
    model = make_model("painn")
    for value in values:
        with pytest.raises(ValueError, match=option):
            EqGNNCalculator(model, **{option: value})
    calc = EqGNNCalculator(model)
    if option in ("min_distance", "domain_fraction", "domain_check"):
        with pytest.raises(ValueError, match=option):
            setattr(calc, option, values[0])


def test_overlapping_atoms_raise_atoms_too_close_error():
    from ase_eqgnn.errors import AtomsTooCloseError

    calc = EqGNNCalculator(make_model("painn"))
    atoms = molecule("H2O")
    atoms.positions[2] = atoms.positions[1] + 0.01
    with pytest.raises(AtomsTooCloseError, match=r"atoms 1 \(H\) and 2 \(H\) are 0.0173 Å apart"):
        calc.get_potential_energy(atoms)
    with pytest.raises(AtomsTooCloseError, match="structure 1"):
        calc.calculate_batch([molecule("H2O"), atoms])


# ------------------------------------------------------------------------------------------------
# Out of the training domain
# ------------------------------------------------------------------------------------------------
def squeezed_copper(distance):
    """Cu fcc 2x2x2 with atom 1 moved to ``distance`` Å from atom 0."""
    atoms = copper(seed=5)
    direction = atoms.positions[1] - atoms.positions[0]
    atoms.positions[1] = atoms.positions[0] + distance * direction / np.linalg.norm(direction)
    return atoms


def cu_model_with_record(shortest=2.4):
    model = make_model("painn", species=(29,))
    model.domain = {"Cu-Cu": shortest}
    return model


def test_domain_check_raises_warns_once_or_stays_silent():
    import warnings

    from ase_eqgnn.errors import OutOfDomainError

    squeezed = squeezed_copper(1.6)  # below 0.75 x 2.4 = 1.8 Å
    raising = EqGNNCalculator(cu_model_with_record(), domain_check="raise")
    with pytest.raises(OutOfDomainError, match=r"atoms 0 \(Cu\) and 1 \(Cu\) are 1.6 Å apart.*"
                                               r"0.75 x 2.4 Å.*domain_check='warn' or 'off'"):
        raising.get_potential_energy(squeezed)
    with pytest.raises(OutOfDomainError, match="structure 1"):
        raising.calculate_batch([copper(), squeezed])
    raising.get_potential_energy(copper())  # inside the domain: no error
    warning = EqGNNCalculator(cu_model_with_record())  # "warn" is the default
    with pytest.warns(UserWarning, match="1.6 Å apart") as caught:
        energy = warning.get_potential_energy(squeezed)
        warning.get_potential_energy(squeezed_copper(1.5))
        warning.calculate_batch([squeezed])
    assert len([w for w in caught if "training data" in str(w.message)]) == 1  # once per calculator
    assert np.isfinite(energy)
    quiet = [EqGNNCalculator(cu_model_with_record(), domain_check="off"),
             EqGNNCalculator(make_model("painn", species=(29,)), domain_check="raise"),  # no record
             EqGNNCalculator(cu_model_with_record(), domain_check="raise", domain_fraction=0.6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for calc in quiet:
            assert calc.get_potential_energy(squeezed) == pytest.approx(energy, rel=1e-6)


def test_domain_check_is_skipped_only_while_it_cannot_fail():
    from ase_eqgnn.errors import OutOfDomainError

    # Atoms approach between two rebuilds (skin 2 Å: no rebuild while they move < 1 Å): the pair
    # must be flagged on the call it crosses the threshold, not at the next rebuild.
    calc = EqGNNCalculator(cu_model_with_record(), domain_check="raise", skin=2.0)
    atoms = squeezed_copper(2.5)
    calc.get_potential_energy(atoms)
    builds = calc.neighbors.builds
    for distance in (2.2, 1.95, 1.85):
        calc.get_potential_energy(squeezed_copper(distance))
    with pytest.raises(OutOfDomainError):
        calc.get_potential_energy(squeezed_copper(1.75))
    assert calc.neighbors.builds == builds
    # Far inside the domain, the check is proven unable to fail until the next rebuild.
    calc = EqGNNCalculator(cu_model_with_record(2.0), domain_check="raise", skin=0.3)
    calc.get_potential_energy(copper(seed=5))
    assert calc.checks.skips_until_rebuild
    calc.domain_fraction = 1.0  # a stricter threshold is honoured at once: the proof is redone
    assert not calc.checks.skips_until_rebuild


# ------------------------------------------------------------------------------------------------
# The host process is left alone
# ------------------------------------------------------------------------------------------------
def test_num_threads_applies_during_calls_only():
    from ase_eqgnn.errors import OutOfDomainError

    model = cu_model_with_record()
    before = torch.get_num_threads()
    outside = 2 if before != 2 else 3
    torch.set_num_threads(outside)
    try:
        calc = EqGNNCalculator(model, num_threads=1, domain_check="raise")
        seen = []
        forward = calc.model.forward
        calc.model.forward = lambda *a, **k: (seen.append(torch.get_num_threads()), forward(*a, **k))[1]
        calc.get_forces(copper())
        calc.calculate_batch([copper(seed=2)])
        assert seen == [1, 1]
        assert torch.get_num_threads() == outside
        with pytest.raises(OutOfDomainError):  # restored when a call fails, too
            calc.get_forces(squeezed_copper(1.0))
        assert torch.get_num_threads() == outside
        assert EqGNNCalculator(model).num_threads is None  # default: torch's setting is left alone
    finally:
        torch.set_num_threads(before)
