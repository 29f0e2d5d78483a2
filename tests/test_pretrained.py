"""Bundled models: registry, loading by name, and accuracy against their reference simulators."""

from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.cli import models as models_cli
from ase_eqgnn.data import read_dataset
from ase_eqgnn.pretrained import list_pretrained, pretrained_path, resolve_model

DATA = Path(__file__).resolve().parent.parent / "training" / "data"


def test_registry_lists_both_kinds(capsys):
    kinds = {(e["name"], e["kind"]) for e in list_pretrained()}
    assert {("ala2", "potential"), ("cu-emt", "potential"), ("ala2", "backmap")} <= kinds
    for entry in list_pretrained("potential"):
        assert {"family", "cutoff_A", "training_data", "test_metrics"} <= set(entry)
    models_cli.main([])
    out = capsys.readouterr().out
    assert "cu-emt  [potential]" in out and "ala2  [backmap]" in out and "forces_mae" in out


def test_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="available: ala2, ala2-cg, cu-emt"):
        pretrained_path("water", kind="potential")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="kind"):
        list_pretrained("forcefield")


def test_cu_emt_matches_emt_on_held_out_frames():
    # independent EMT runs (seed 7) that the model never saw; bound: 2x the registered test MAE
    calc = EqGNNCalculator.from_pretrained("cu-emt", dtype="float64")
    errors, stress_errors = [], []
    for atoms in read(DATA / "cu_emt_test.extxyz", "::6"):
        reference = atoms.copy()
        reference.calc = EMT()
        errors.append(np.abs(calc.get_forces(atoms) - reference.get_forces()))
        stress_errors.append(np.abs(calc.get_stress(atoms) - reference.get_stress()))
    assert 1000 * np.mean(errors) < 8.0  # meV/Å (measured 3.5 on all 60 frames)
    assert 1000 * np.mean(stress_errors) < 1.5  # meV/Å^3 (measured 0.31)


def test_ala2_matches_openmm_on_held_out_frames():
    # frames of an independent OpenMM run (seed 2) with their amber14/OBC2 forces
    frames = read_dataset(DATA / "ala2_test.h5", energies=DATA / "ala2_test.npz", index="::25")
    calc = EqGNNCalculator.from_pretrained("ala2", dtype="float64")
    errors = [np.abs(calc.get_forces(f.to_atoms()) - f.forces) for f in frames]
    assert 1000 * np.mean(errors) < 40.0  # meV/Å (registered test MAE on all 500 frames: 21)


def test_eqgnn_md_default_runs_on_the_bundled_system(tmp_path, monkeypatch, capsys):
    from ase_eqgnn.cli import md as md_cli

    monkeypatch.chdir(tmp_path)
    assert md_cli.main(["--steps", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "22 atoms" in out and "completed" in out and "temperature" in out
    assert all((tmp_path / f).exists() for f in ("md.traj", "md.csv", "md.png"))


@pytest.mark.slow
def test_eqgnn_md_with_no_arguments(tmp_path, monkeypatch):
    from ase_eqgnn.cli import md as md_cli

    monkeypatch.chdir(tmp_path)
    assert md_cli.main([]) == 0


# -- the bundled files are current: sealed, with their training domain, weights unchanged ----------
def _resave_script():
    import importlib
    import sys

    sys.path.insert(0, str(DATA.parent))
    try:
        return importlib.import_module("resave_bundled")
    finally:
        sys.path.remove(str(DATA.parent))


def test_bundled_files_are_sealed_and_load_silently():
    import warnings

    import torch

    from ase_eqgnn.cg.backmap import BackMapper
    from ase_eqgnn.checkpoint import load_model, payload_digest

    for entry in list_pretrained():
        path = pretrained_path(entry["name"], entry["kind"])
        raw = torch.load(path, weights_only=True)
        coarse_grained = '"cg":' in raw.get("config_json", "")  # CG potentials are version 3
        assert raw.get("format_version", raw.get("version")) == (3 if coarse_grained else 2), path
        assert raw["sha256"] == payload_digest(raw), path
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "older file" warning
            (load_model if entry["kind"] == "potential" else BackMapper.load)(path)


# Energies and the sum of |forces| on the first test frame, in float64, from the bundled files as
# they were before they were re-saved with the digest and domain record (commit 825c9a1); the
# re-saved files must reproduce them, their weights being the same bits.
BEFORE_RESAVE = {"cu-emt": (1.1687492286598327, 37.64857347829208),
                 "ala2": (-0.4709511626392893, 51.15196019523666)}


def _first_test_frame(name):
    if name == "cu-emt":
        return read(DATA / "cu_emt_test.extxyz", "0")
    frames = read_dataset(DATA / "ala2_test.h5", energies=DATA / "ala2_test.npz", index="0:1")
    return frames[0].to_atoms()


@pytest.mark.parametrize("name", sorted(BEFORE_RESAVE))
def test_resaved_potentials_give_the_energies_of_the_original_files(name):
    atoms = _first_test_frame(name)
    atoms.calc = EqGNNCalculator.from_pretrained(name, dtype="float64")
    energy, force_sum = BEFORE_RESAVE[name]
    np.testing.assert_allclose(atoms.get_potential_energy(), energy, rtol=1e-12)
    np.testing.assert_allclose(np.abs(atoms.get_forces()).sum(), force_sum, rtol=1e-12)


@pytest.mark.parametrize("name", ["cu-emt", "ala2"])
def test_bundled_potentials_carry_the_domain_of_their_training_data(name):
    """The record against the shortest distances ASE finds in the training frames, per element pair."""
    from ase.data import chemical_symbols

    from ase_eqgnn.checkpoint import load_model

    model = load_model(pretrained_path(name))
    expected = {}
    for frame in _resave_script().training_frames(name):
        atoms = frame.to_atoms()
        d = atoms.get_all_distances(mic=atoms.pbc.any())  # cells are over twice the cutoff wide
        z = atoms.numbers
        for a in np.unique(z):
            for b in np.unique(z[z >= a]):
                block = d[np.ix_(z == a, z == b)]
                shortest = np.min(block[block > 0], initial=np.inf)
                key = f"{chemical_symbols[a]}-{chemical_symbols[b]}"
                expected[key] = min(expected.get(key, np.inf), shortest)
    expected = {k: v for k, v in expected.items() if v <= model.cutoff}
    assert model.domain.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(model.domain[key] - value) < 1e-6, key


def test_resave_script_keeps_weights_and_adds_digest_and_domain(tmp_path):
    """The script on files of the old layout (format 1, no digest, no record), made here."""
    import warnings

    import torch

    from ase_eqgnn.cg.backmap import BackMapper
    from ase_eqgnn.checkpoint import CheckpointWarning, load_checkpoint_dict, load_model

    script = _resave_script()
    raw = torch.load(pretrained_path("cu-emt"), weights_only=True)
    config = load_checkpoint_dict(pretrained_path("cu-emt"))["config"]
    config.pop("domain")
    old = tmp_path / "old.pt"
    torch.save({"format": "ase_eqgnn", "format_version": 1, "package_version": "0.1.0",
                "config_json": __import__("json").dumps(config), "state_dict": raw["state_dict"]}, old)
    with pytest.warns(CheckpointWarning):
        before = load_model(old)
    first = old.read_bytes()
    with pytest.raises(ValueError, match="Cu-Cu"):  # a bad record: nothing is written
        script.resave_potential(old, old, {"Cu-Cu": -1.0})
    assert old.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]
    script.resave_potential(old, tmp_path / "new.pt", {"Cu-Cu": 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = load_model(tmp_path / "new.pt")
    assert after.domain == {"Cu-Cu": 2.0}
    assert load_checkpoint_dict(tmp_path / "new.pt")["config"]["metadata"] == config["metadata"]
    for (k1, v1), (k2, v2) in zip(before.state_dict().items(), after.state_dict().items()):
        assert k1 == k2 and v1.dtype == v2.dtype and torch.equal(v1, v2), k1

    backmap = torch.load(pretrained_path("ala2", "backmap"), weights_only=True)
    backmap.pop("sha256")
    backmap["version"] = 1
    torch.save(backmap, tmp_path / "old_backmap.pt")
    script.resave_backmap(tmp_path / "old_backmap.pt", tmp_path / "new_backmap.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapper = BackMapper.load(tmp_path / "new_backmap.pt")
    for key, value in backmap["model_state"].items():
        assert torch.equal(mapper.model.state_dict()[key], value), key
