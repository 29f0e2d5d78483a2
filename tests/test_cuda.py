"""The CUDA path gives the CPU's answers: neighbour lists, the three models (every row layout), the
calculator under MD, batches, and training. Skipped where torch sees no CUDA device.

Each CUDA result is compared with the same computation on the CPU in float64 (or with ASE's neighbour
list), so a wrong device placement, a host/device mix-up or a CUDA-only indexing bug fails here.
"""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from conftest import maxwell_boltzmann
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ase_eqgnn import EqGNNCalculator, build_model, keys, load_model, save_model
from ase_eqgnn.neighbors import VerletList, batched_neighbor_list, neighbor_list, vesin_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SPECIES = [1, 6, 8, 29]
SIZES = {"egnn": dict(features=32, layers=2), "painn": dict(features=32, layers=3, n_radial=8),
         "tp": dict(features=8, layers=2, l_max=2)}


def pair_set(i, j, shifts):
    i, j, shifts = (np.asarray(torch.as_tensor(x).cpu()) for x in (i, j, shifts))
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist())))


def make_model(name, cutoff=5.0):
    torch.manual_seed(0)
    model = build_model(name, SPECIES, cutoff, **SIZES[name])
    with torch.no_grad():  # a non-trivial output layer, so a wrong result shows
        model.scale.fill_(1.3)
        model.shift.fill_(-0.2)
        model.E0.copy_(torch.linspace(-1.0, -3.0, len(SPECIES)))
    return model


def water_cluster():
    """96 atoms: enough neighbours per atom for the shared-row layout."""
    cluster = Atoms()
    for ix in range(4):
        for iy in range(4):
            for iz in range(2):
                w = molecule("H2O")
                w.translate([3.0 * ix, 3.0 * iy, 3.0 * iz])
                cluster += w
    cluster.rattle(0.05, seed=3)
    return cluster


def systems():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    cu.rattle(0.05, seed=1)
    small = bulk("Cu", "fcc", a=3.6)  # 1 atom, a cell far smaller than the cutoff
    small.rattle(0.05, seed=2)
    biphenyl = molecule("biphenyl")  # small and dense: PaiNN's N x N layout
    return {"Cu108": cu, "Cu1": small, "biphenyl": biphenyl, "water96": water_cluster()}


# ------------------------------------------------------------------------------------ neighbours
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_neighbor_list_on_cuda_matches_ase(pbc):
    rng = np.random.default_rng(0)
    triclinic = np.array([[9.0, 0, 0], [2.5, 8.0, 0], [1.0, 1.5, 7.5]])
    for cell, n, cutoff in ((triclinic, 200, 4.0), (np.diag([2.0, 2.2, 2.1]), 3, 4.5)):
        atoms = Atoms("H" + str(n), positions=rng.uniform(0, 1, (n, 3)) @ cell, cell=cell, pbc=pbc)
        got = neighbor_list(torch.tensor(atoms.positions, device="cuda"), cutoff,
                            torch.tensor(cell, device="cuda"), pbc)
        assert all(t.device.type == "cuda" for t in got)
        assert pair_set(*got) == pair_set(*ase_neighbor_list("ijS", atoms, cutoff))


def test_batched_neighbor_list_on_cuda_matches_cpu():
    images = list(systems().values())
    pos = torch.tensor(np.concatenate([a.positions for a in images]))
    batch = torch.cat([torch.full((len(a),), k) for k, a in enumerate(images)])
    cell = torch.tensor(np.stack([a.cell[:] for a in images]))
    pbc = torch.tensor(np.stack([a.pbc for a in images]))
    cpu = batched_neighbor_list(pos, 5.0, batch, cell, pbc)
    gpu = batched_neighbor_list(pos.cuda(), 5.0, batch.cuda(), cell.cuda(), pbc.cuda())
    assert gpu[0].device.type == "cuda"
    assert pair_set(*gpu) == pair_set(*cpu)


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_verlet_list_on_cuda_rebuilds_like_the_cpu(backend):
    if backend == "vesin" and not vesin_available():
        pytest.skip("vesin-torch not installed")
    atoms = systems()["Cu108"]
    lists = {dev: VerletList(5.0, skin=0.4, backend=backend) for dev in ("cpu", "cuda")}
    rng = np.random.default_rng(4)
    cell = torch.tensor(atoms.cell[:])
    numbers = torch.tensor(atoms.numbers)
    for _ in range(8):
        atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        pos = torch.tensor(atoms.positions)
        cpu = lists["cpu"](pos, cell, torch.tensor(atoms.pbc), numbers)
        gpu = lists["cuda"](pos.cuda(), cell.cuda(), torch.tensor(atoms.pbc).cuda(), numbers.cuda())
        assert gpu[0].device.type == "cuda"
        assert pair_set(*gpu) == pair_set(*cpu)
    assert lists["cuda"].builds == lists["cpu"].builds > 1


# ------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
@pytest.mark.parametrize("system", ["Cu108", "Cu1", "biphenyl", "water96"])
def test_calculator_on_cuda_matches_cpu(name, system):
    atoms = systems()[system]
    model = make_model(name)
    properties = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else [])
    ref = EqGNNCalculator(model, device="cpu", dtype="float64")
    ref.calculate(atoms, properties)
    for dtype, rtol in (("float64", 1e-9), ("float32", 2e-4)):
        calc = EqGNNCalculator(model, device="cuda", dtype=dtype)
        calc.calculate(atoms, properties)
        for key in properties:
            want, got = np.asarray(ref.results[key]), np.asarray(calc.results[key])
            scale = max(np.abs(want).max(), 1.0)
            assert np.abs(got - want).max() <= rtol * scale, (dtype, key)


def test_painn_regathering_in_the_backward_pass_on_cuda_matches_cpu(monkeypatch):
    """PaddedNeighborhood.gather_product's custom backward (large systems) on CUDA, forced on Cu108."""
    from ase_eqgnn.models import layouts

    monkeypatch.setattr(layouts, "LEAN_GATHER_BYTES", 0)
    atoms = systems()["Cu108"]
    model = make_model("painn")
    ref = EqGNNCalculator(model, device="cpu", dtype="float64")
    calc = EqGNNCalculator(model, device="cuda", dtype="float64")
    for c in (ref, calc):
        c.calculate(atoms, ["energy", "forces", "stress"])
    for key in ("energy", "forces", "stress"):
        want, got = np.asarray(ref.results[key]), np.asarray(calc.results[key])
        assert np.abs(got - want).max() <= 1e-9 * max(np.abs(want).max(), 1.0), key


@pytest.mark.parametrize("name", ["painn", "tp"])
def test_compiled_calculator_on_cuda_matches_cpu(name):
    """EqGNNCalculator(compile=True) on CUDA (Triton kernels) against the eager CPU results."""
    import warnings

    model = make_model(name)
    for system in ("biphenyl", "Cu108"):
        atoms = systems()[system]
        properties = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
        ref = EqGNNCalculator(model, device="cpu", dtype="float64")
        calc = EqGNNCalculator(model, device="cuda", dtype="float64", compile=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile failed")
            for c in (ref, calc):
                c.calculate(atoms, properties)
        for key in properties:
            want, got = np.asarray(ref.results[key]), np.asarray(calc.results[key])
            assert np.abs(got - want).max() <= 1e-9 * max(np.abs(want).max(), 1.0), (system, key)


def test_forces_on_cuda_are_minus_the_energy_gradient():
    atoms = systems()["Cu108"][:20]
    atoms.pbc = False
    calc = EqGNNCalculator(make_model("tp"), device="cuda", dtype="float64")
    forces = calc.get_forces(atoms)
    h = 1e-5
    for a, c in ((0, 0), (7, 1), (13, 2)):
        e = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[a, c] += sign * h
            e.append(calc.get_potential_energy(displaced))
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[a, c]) < 1e-6 * max(1.0, abs(forces[a, c]))


def test_md_on_cuda_follows_the_cpu_trajectory():
    trajectories = {}
    for device in ("cpu", "cuda"):
        atoms = systems()["Cu108"]
        atoms.calc = EqGNNCalculator(make_model("painn"), device=device, dtype="float64", skin=0.3)
        maxwell_boltzmann(atoms, 600, np.random.default_rng(5))
        VelocityVerlet(atoms, 2.0 * units.fs).run(40)
        trajectories[device] = (atoms.positions.copy(), atoms.get_total_energy(),
                                atoms.calc.neighbors.builds)
    assert np.abs(trajectories["cuda"][0] - trajectories["cpu"][0]).max() < 1e-8
    assert abs(trajectories["cuda"][1] - trajectories["cpu"][1]) < 1e-8
    assert trajectories["cuda"][2] == trajectories["cpu"][2] > 1  # the list was rebuilt on the way


def test_batch_on_cuda_matches_cpu():
    images = list(systems().values())
    model = make_model("painn")
    cpu = EqGNNCalculator(model, device="cpu", dtype="float64").calculate_batch(images)
    gpu = EqGNNCalculator(model, device="cuda", dtype="float64").calculate_batch(images)
    for a, b in zip(cpu, gpu):
        assert a.keys() == b.keys()
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-9, atol=1e-9), key


# ------------------------------------------------------------------------------------ training
def test_training_on_cuda_saves_a_model_the_cpu_can_use(tmp_path):
    from ase.calculators.emt import EMT

    from ase_eqgnn.train import TrainConfig, train

    frames = []
    rng = np.random.default_rng(6)
    for _ in range(12):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    import ase.io

    data = tmp_path / "cu.extxyz"
    ase.io.write(data, frames)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), device="cuda", cutoff=3.5,
                      hparams={"features": 16, "layers": 2}, batch_size=4, max_epochs=4,
                      valid_fraction=0.25, dtype="float64", progress=False)
    train(cfg)
    model = load_model(tmp_path / "run" / "best.pt", map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    save_model(model, tmp_path / "again.pt")
    atoms = frames[0]
    cpu = EqGNNCalculator(tmp_path / "again.pt", device="cpu", dtype="float64")
    gpu = EqGNNCalculator(tmp_path / "again.pt", device="cuda", dtype="float64")
    assert np.allclose(cpu.get_forces(atoms), gpu.get_forces(atoms), atol=1e-10)
    assert keys.FORCES in cpu.results


# ------------------------------------------------------------------------------------ CUDA graphs
@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
@pytest.mark.parametrize("system", ["Cu108", "water96"])
def test_cuda_graph_replays_follow_the_eager_trajectory(name, system):
    """MD through captured graphs (re-captured at every list rebuild) = MD through the eager model."""
    runs = {}
    for graphs in (True, False):
        atoms = systems()[system]
        calc = EqGNNCalculator(make_model(name), device="cuda", dtype="float64", skin=0.3,
                               cuda_graphs=graphs)
        atoms.calc = calc
        maxwell_boltzmann(atoms, 600, np.random.default_rng(7))
        VelocityVerlet(atoms, 1.0 * units.fs).run(40)
        runs[graphs] = (atoms.positions.copy(), atoms.get_forces(), calc.neighbors.builds)
        if graphs:
            assert calc._captured is not None and calc._captured.cuda_graph is not None
    assert np.abs(runs[True][0] - runs[False][0]).max() < 1e-9
    assert np.abs(runs[True][1] - runs[False][1]).max() < 1e-8
    assert runs[True][2] == runs[False][2] > 1  # captured again after rebuilds


def test_cuda_graph_auto_captures_at_a_lists_second_call_in_float32():
    atoms = systems()["Cu108"]
    model = make_model("painn")
    calc = EqGNNCalculator(model, device="cuda", cuda_graphs="auto")
    eager = EqGNNCalculator(model, device="cuda", cuda_graphs=False)
    rng = np.random.default_rng(8)
    for call in range(4):
        atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
        calc.calculate(atoms, ["energy", "forces", "stress"])
        eager.calculate(atoms, ["energy", "forces", "stress"])
        assert (calc._captured is not None) == (call >= 1)
        for key in ("energy", "forces", "stress"):
            want, got = np.asarray(eager.results[key]), np.asarray(calc.results[key])
            assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0), key
