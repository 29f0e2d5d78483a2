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
    with pytest.raises(ValueError, match="available: ala2, cu-emt"):
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
