"""The coarse-grained potential (issue 19, phase 2): a network on beads plus priors, one model file,
loaded by EqGNNCalculator like any potential."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule  # noqa: F401  (ase import check)
from scipy.spatial.transform import Rotation

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.cg.beads import beads_to_atoms
from ase_eqgnn.cg.forcematch import load_cg_dataset
from ase_eqgnn.cg.potential import CGPotential, check_cg_record
from ase_eqgnn.cg.priors import CGPrior
from ase_eqgnn.checkpoint import CheckpointError, load_model, payload_digest, save_model
from ase_eqgnn.errors import OutOfDomainError
from ase_eqgnn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "training/data/ala2_cg_5bead.npz"


@pytest.fixture(scope="module")
def data():
    return load_cg_dataset(DATASET)


def make_cg(data, family="painn", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = build_model(family, species=sorted(set(data.beads.numbers.tolist())), cutoff=6.0,
                      features=8, layers=1).to(dtype)
    with torch.no_grad():  # a visible network contribution next to the prior
        net.scale.fill_(0.05)
    prior = CGPrior.fit(data.positions[:2000], data.temperature_K)
    return CGPotential(net, prior, data.beads, data.cg_map)


@pytest.mark.parametrize("family", ["egnn", "painn", "tp"])
def test_energy_is_network_plus_prior_and_forces_are_its_gradient(data, family):
    model = make_cg(data, family)
    x = data.positions[7].astype(np.float64)
    atoms = beads_to_atoms(data.beads, x)
    atoms.calc = EqGNNCalculator(model, dtype="float64", domain_check="off")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    # the parts, evaluated independently
    from ase_eqgnn.graph import AtomicGraph
    g = AtomicGraph.from_atoms(atoms, dtype=torch.float64).with_neighbors(model.cutoff)
    net_energy = float(Potential_forward(model, g))
    prior_energy = float(model.prior(torch.as_tensor(x)))
    assert abs(prior_energy) > 1e-3 and abs(net_energy) > 1e-5
    assert energy == pytest.approx(net_energy + prior_energy, abs=1e-9)
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, abs=1e-9)
    # central finite differences of the energy
    h, fd = 1e-5, np.zeros_like(x)
    for i in range(len(x)):
        for k in range(3):
            for sign in (1, -1):
                shifted = atoms.copy()
                shifted.positions[i, k] += sign * h
                shifted.calc = atoms.calc
                fd[i, k] -= sign * shifted.get_potential_energy() / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-6 * max(1.0, np.abs(forces).max()))


def Potential_forward(model: CGPotential, graph):
    """The network's energy alone (Potential's atom_energies, without the prior)."""
    from ase_eqgnn.models.potential import Potential
    species = model.species_index(graph.numbers)
    e = Potential.atom_energies(model, species, graph.positions, graph.cell, graph.batch,
                                graph.edge_index, graph.shifts)
    return e.sum().detach()


def test_rotation_and_translation_invariance(data):
    model = make_cg(data, "egnn")
    calc = EqGNNCalculator(model, dtype="float64", domain_check="off")
    x = data.positions[11].astype(np.float64)
    rot = Rotation.random(random_state=3).as_matrix()
    a, b = beads_to_atoms(data.beads, x), beads_to_atoms(data.beads, x @ rot.T + [3.0, -2.0, 7.5])
    a.calc = calc
    e_a, f_a = a.get_potential_energy(), a.get_forces()
    b.calc = calc
    assert b.get_potential_energy() == pytest.approx(e_a, abs=1e-9)
    np.testing.assert_allclose(b.get_forces(), f_a @ rot.T, atol=1e-9)
    assert np.abs(f_a.sum(0)).max() < 1e-9  # no net force on an isolated molecule


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_file_round_trip_and_calculator_from_path(data, tmp_path, dtype):
    model = make_cg(data, "painn", dtype=getattr(torch, dtype))
    model.domain = {"H-H": 2.0}
    path = tmp_path / "cg.pt"
    save_model(model, path, metadata={"note": "test"})
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 3 and raw["sha256"] == payload_digest(raw)
    assert set(raw["state_dict"]) == set(Potential_state_names(model))  # the prior is data, not tensors
    loaded = load_model(path)
    assert isinstance(loaded, CGPotential) and loaded.dtype == getattr(torch, dtype)
    assert loaded.beads == data.beads and loaded.cg_map == data.cg_map
    assert loaded.config["cg"] == model.config["cg"]  # the fitted float64 constants, whatever the dtype
    assert CGPrior.from_dict(loaded.config["cg"]["prior"]).to_dict() == loaded.config["cg"]["prior"]
    assert loaded.temperature_K == data.temperature_K and loaded.domain == {"H-H": 2.0}
    x = data.positions[:3].astype(np.float64)
    for frame in x:
        a, b = beads_to_atoms(data.beads, frame), beads_to_atoms(data.beads, frame)
        a.calc = EqGNNCalculator(model, dtype=dtype, domain_check="off")
        b.calc = EqGNNCalculator(path, dtype=dtype, domain_check="off")
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), rtol=1e-5, atol=1e-5)


def Potential_state_names(model):
    from ase_eqgnn.models.potential import Potential
    return list(torch.nn.Module.state_dict(model).keys())


def _reseal(path, out, edit):
    raw = torch.load(path, weights_only=True)
    import json
    config = json.loads(raw["config_json"])
    edit(config)
    raw["config_json"] = json.dumps(config)
    raw["sha256"] = payload_digest(raw)
    torch.save(raw, out)
    return out


def test_tampered_or_absurd_prior_is_refused(data, tmp_path):
    path = tmp_path / "cg.pt"
    save_model(make_cg(data), path)
    # an edit without re-sealing: the digest
    raw = torch.load(path, weights_only=True)
    raw["config_json"] = raw["config_json"].replace('"temperature_K": 300.0', '"temperature_K": 301.0', 1)
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="digest"):
        load_model(tmp_path / "edited.pt")

    def set_prior(key, value):
        def edit(config):
            config["cg"]["prior"][key] = value
        return edit

    cases = {
        "k_bond": set_prior("k_bond", [1e9] * 4),
        "r0": set_prior("r0", [-1.0, 1.4, 1.5, 1.3]),
        "epsilon": set_prior("epsilon", 1e6),
        "bonds": set_prior("bonds", [[0, 1], [1, 2], [2, 3], [3, 9]]),
        "pair": set_prior("pairs", [[0, 0], [1, 4]]),
        "temperature": lambda c: c["cg"].update(temperature_K=-5.0),
        "bead types": lambda c: c["cg"]["beads"].update(types=["A"] * 5),
        "keys": lambda c: c["cg"].update(code="import os"),
        "version": None,
    }
    for name, edit in cases.items():
        if edit is None:  # a coarse-grained section in a file claiming version 2
            raw = torch.load(path, weights_only=True)
            raw["format_version"] = 2
            raw["sha256"] = payload_digest(raw)
            torch.save(raw, tmp_path / "v2.pt")
            bad = tmp_path / "v2.pt"
        else:
            bad = _reseal(path, tmp_path / f"{name}.pt", edit)
        with pytest.raises(CheckpointError, match="invalid config"):
            load_model(bad)
        with pytest.raises(CheckpointError):
            EqGNNCalculator(bad)


def test_structures_that_are_not_the_molecule(data):
    model = make_cg(data)
    calc = EqGNNCalculator(model, dtype="float64", domain_check="off")
    x = data.positions[0].astype(np.float64)
    swapped = beads_to_atoms(data.beads, x)
    swapped.numbers = swapped.numbers[[1, 0, 2, 3, 4]]
    swapped.calc = calc
    with pytest.raises(ValueError, match="not this model's molecule"):
        swapped.get_potential_energy()
    broken = beads_to_atoms(data.beads, x)
    broken.positions[3:] += [20.0, 0, 0]  # bond 2-3 far beyond the cutoff
    broken.calc = calc
    with pytest.raises(OutOfDomainError, match="broken apart"):
        broken.get_potential_energy()
    periodic = beads_to_atoms(data.beads, x)
    periodic.cell, periodic.pbc = np.eye(3) * 30, True
    periodic.calc = calc
    with pytest.raises(ValueError, match="non-periodic"):
        periodic.get_potential_energy()


def test_check_cg_record_needs_the_network_species(data):
    record = make_cg(data).config["cg"]
    check_cg_record(record, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="network knows"):
        check_cg_record(record, [1, 2, 3, 4, 5, 6])


# -- training by force matching with the package's trainer -------------------------------------
ALA2_TEST = ROOT / "training/data/ala2_test.h5"


def test_trainer_with_cg_map_reduces_the_force_loss_and_writes_a_cg_model(tmp_path):
    from ase_eqgnn.cg.forcematch import map_frames
    from ase_eqgnn.cg.maps import ala2_five_bead_map
    from ase_eqgnn.data import read_dataset
    from ase_eqgnn.structures import structure_path
    from ase_eqgnn.train import TrainConfig, train
    import mdtraj as md

    cfg = TrainConfig(data=str(ALA2_TEST), energies=str(ALA2_TEST.with_suffix(".npz")), index="::2",
                      cg_map="ala2-5bead", temperature=300.0, out=str(tmp_path / "run"), max_epochs=6,
                      batch_size=16, hparams={"features": 16, "layers": 1}, progress=False, lr=3e-3,
                      valid_fraction=0.1, energy_weight=1.0)
    result = train(cfg)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert np.isnan(result.best_metrics["energy_mae"]) and result.best_metrics["forces_mae"] > 0
    model = load_model(tmp_path / "run/best.pt")
    assert isinstance(model, CGPotential) and model.temperature_K == 300.0
    top = md.load_topology(str(structure_path("ala2")))
    assert model.cg_map == ala2_five_bead_map(top)
    # the priors are those of the training beads (the random split's training part)
    frames = read_dataset(ALA2_TEST, energies=ALA2_TEST.with_suffix(".npz"), index="::2")
    from ase_eqgnn.data import split_dataset
    train_frames, _ = split_dataset(frames, 0.1, seed=0)
    x, _ = map_frames(train_frames, model.cg_map)
    assert model.config["cg"]["prior"] == CGPrior.fit(x, 300.0).to_dict()
    atoms = beads_to_atoms(tmp_path / "run/best.pt", x[0])
    atoms.calc = EqGNNCalculator(tmp_path / "run/best.pt")
    assert atoms.get_forces().shape == (5, 3) and np.isfinite(atoms.get_potential_energy())


def test_eqgnn_train_cg_options_are_checked_before_anything_is_written(tmp_path, capsys):
    from ase_eqgnn.cli.train import main

    base = ["--data", str(ALA2_TEST), "--energies", str(ALA2_TEST.with_suffix(".npz")), "--no-progress"]
    cases = {"unknown CG map": ["--cg-map", "martini"],
             "temperature": ["--cg-map", "ala2-5bead", "--temperature", "-3"],
             "forces alone": ["--cg-map", "ala2-5bead", "--forces-weight", "0"],
             "at least 2 beads": ["--cg-map", "ca"],  # ala2 has one alpha carbon
             "does not exist": ["--cg-map", "nowhere/map.json"]}
    for k, (needle, extra) in enumerate(cases.items()):
        out = tmp_path / f"run{k}"
        assert main(base + extra + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("eqgnn-train: error:") and needle in err and err.count("\n") == 1
        assert not out.exists()


def test_trainer_on_a_cg_data_set(tmp_path):
    from ase_eqgnn.train import TrainConfig, train

    cfg = TrainConfig(data=str(DATASET), index="::200", cg_map="data", out=str(tmp_path / "run"),
                      max_epochs=2, batch_size=16, hparams={"features": 8, "layers": 1}, progress=False)
    train(cfg)
    model = load_model(tmp_path / "run/best.pt")
    assert model.beads == load_cg_dataset(DATASET).beads
    with pytest.raises(ValueError, match="sampled at 300 K"):
        train(TrainConfig(data=str(DATASET), cg_map="data", temperature=310.0, out=str(tmp_path / "r2")))


# -- bead structures and CG MD ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cg_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("cg") / "cg.pt"
    model = make_cg(data, "painn", dtype=torch.float32)
    save_model(model, path)
    return path


@pytest.mark.parametrize("fmt", ["extxyz", "traj"])
def test_beads_to_atoms_from_a_model_file_round_trips_through_ase_io(data, cg_file, tmp_path, fmt):
    import ase.io

    atoms = beads_to_atoms(cg_file, data.positions[5])
    assert atoms.numbers.tolist() == data.beads.numbers.tolist()
    np.testing.assert_allclose(atoms.get_masses(), data.beads.masses)
    path = tmp_path / f"beads.{fmt}"
    ase.io.write(path, atoms, format=fmt)
    back = ase.io.read(path)
    assert back.numbers.tolist() == atoms.numbers.tolist()
    np.testing.assert_allclose(back.get_masses(), atoms.get_masses())
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-6)
    with pytest.raises(ValueError, match="not a coarse-grained one"):
        beads_to_atoms("ala2", data.positions[5])
    with pytest.raises(ValueError, match="shape"):
        beads_to_atoms(cg_file, data.positions[5][:4])


def test_eqgnn_md_runs_langevin_on_a_bead_file_at_the_data_temperature(data, cg_file, tmp_path, capsys):
    import ase.io
    import json

    from ase_eqgnn.cli.md import main

    beads = tmp_path / "beads.xyz"
    start = beads_to_atoms(cg_file, data.positions[0])
    start.set_masses(np.ones(5))  # the model's masses win over the file's
    ase.io.write(beads, start, format="extxyz")
    out = tmp_path / "cg_md.traj"
    rc = main([str(beads), "--model", str(cg_file), "--steps", "40", "--timestep", "2",
               "--interval", "10", "--traj", str(out), "--log", "none", "--plot", "none",
               "--json", str(tmp_path / "md.json"), "--no-progress", "--allow-out-of-domain"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "at 300.0 K" in text
    frames = ase.io.read(out, ":")
    assert len(frames) >= 4 and all(f.numbers.tolist() == [1, 2, 3, 4, 5] for f in frames)
    np.testing.assert_allclose(frames[-1].get_masses(), data.beads.masses)
    assert not np.allclose(frames[-1].positions, frames[0].positions)
    assert json.loads((tmp_path / "md.json").read_text())["steps"] == 40
    # an all-atom structure is not the model's molecule: one line, exit 2, nothing written
    rc = main([str(ROOT / "ase_eqgnn/structures/ala2.pdb"), "--model", str(cg_file), "--steps", "5",
               "--traj", str(tmp_path / "x.traj"), "--log", "none", "--plot", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "not this coarse-grained model's molecule" in err and err.count("\n") == 1
    assert not (tmp_path / "x.traj").exists()


def test_dihedral_prior_recovers_a_chiral_distribution_and_is_odd_under_reflection():
    """Boltzmann inversion of a known dihedral distribution p ~ exp(-(a cos phi + b sin phi)/kT)
    gives back a and b; the prior then tells a chain from its mirror image (a network cannot)."""
    from ase import units
    from ase_eqgnn.cg.priors import dihedral_angles

    kT = units.kB * 300.0
    a, b = 0.01, 0.03  # eV
    rng = np.random.default_rng(0)
    grid = np.linspace(-np.pi, np.pi, 20001)[:-1]
    p = np.exp(-(a * np.cos(grid) + b * np.sin(grid)) / kT)
    phi = rng.choice(grid, size=40000, p=p / p.sum())
    # four beads with bond length 1.5, right angles, the sampled dihedral (+ small noise)
    x = np.zeros((len(phi), 4, 3))
    x[:, 0] = [1.5, 0, 0]
    x[:, 2] = [0, 0, 1.5]
    x[:, 3] = np.stack([1.5 * np.cos(phi), 1.5 * np.sin(phi), np.full_like(phi, 1.5)], 1)
    x += rng.normal(scale=0.02, size=x.shape)
    prior = CGPrior.fit(x, 300.0, dihedral_order=2)
    assert prior.dihedrals.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_allclose(prior.dihedral_cos[0, 0], a, atol=0.003)
    np.testing.assert_allclose(prior.dihedral_sin[0, 0], b, atol=0.003)
    assert abs(float(prior.dihedral_cos[0, 1])) < 0.003 and abs(float(prior.dihedral_sin[0, 1])) < 0.003
    xt = torch.as_tensor(x[:3])
    mirror = xt * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(dihedral_angles(mirror, prior.dihedrals), -dihedral_angles(xt, prior.dihedrals))
    assert not torch.allclose(prior(mirror), prior(xt))
    assert CGPrior.fit(x, 300.0, dihedral_order=0).dihedrals.shape == (0, 4)


def test_replica_langevin_samples_the_prior_boltzmann_distribution(data):
    """With the network switched off, the replicas' bond lengths follow the harmonic prior:
    mean r0 and variance kT / k (as fitted from the data: the data's own mean and variance)."""
    from ase import units
    from ase_eqgnn.cg.loop import run_replicas
    from ase_eqgnn.cg.priors import bond_lengths

    model = make_cg(data, "egnn")
    with torch.no_grad():
        model.scale.fill_(0.0)
    frames, info = run_replicas(model, data.positions[0], 300.0, 2.0, 600, 64, 10, seed=1)
    assert frames.shape == (60, 64, 5, 3) and info["simulated_ns"] == pytest.approx(64 * 600 * 2e-6)
    r = bond_lengths(torch.as_tensor(frames[20:].reshape(-1, 5, 3)), model.prior.bonds).numpy()
    kT = units.kB * 300.0
    np.testing.assert_allclose(r.mean(0), model.prior.r0.numpy(), atol=0.01)
    np.testing.assert_allclose(r.var(0), kT / model.prior.k_bond.numpy(), rtol=0.2)


# -- the bundled ala2-cg ------------------------------------------------------------------------
def test_bundled_ala2_cg_loads_like_any_potential(data, tmp_path, capsys):
    from ase_eqgnn.cg.backmap import BackMapper
    from ase_eqgnn.cli.md import main as md_main
    from ase_eqgnn.pretrained import list_pretrained, pretrained_path

    import ase_eqgnn.cg

    assert ase_eqgnn.cg.beads_to_atoms is beads_to_atoms  # the spelling
    entry = {e["name"]: e for e in list_pretrained("potential")}["ala2-cg"]
    assert entry["test_metrics"]["forces_mae"] > 0
    atoms = beads_to_atoms("ala2-cg", data.positions[100])
    atoms.calc = EqGNNCalculator.from_pretrained("ala2-cg")
    forces = atoms.get_forces()
    assert forces.shape == (5, 3) and np.abs(forces.sum(0)).max() < 1e-4
    model = load_model(pretrained_path("ala2-cg"))
    assert model.beads == data.beads and model.temperature_K == 300.0
    # the same map as the bundled back-mapper's, so its frames back-map
    np.testing.assert_allclose(model.cg_map.weights(), BackMapper.load("ala2").cg_map.weights())
    # eqgnn-md with no structure: the bundled all-atom ala2 mapped to beads
    rc = md_main(["--model", "ala2-cg", "--steps", "20", "--timestep", "4", "--traj",
                  str(tmp_path / "cg.traj"), "--log", "none", "--plot", "none", "--no-progress"])
    assert rc == 0, capsys.readouterr()


def test_lammps_export_refuses_a_cg_model(cg_file):
    from ase_eqgnn.lammps.model import load_potential

    with pytest.raises(ValueError, match="coarse-grained"):
        load_potential(cg_file)
