"""``pair_style mliap unified`` with EqGNNMLIAP in a LAMMPS built with ML-IAP Python support
(build-lammps.sh), against EqGNNCalculator on 1 and 2 MPI ranks, for every model family.

Float64: energy to 1e-9 eV, forces to 1e-10 eV/Å, virial pressure to 1e-6 relative (LAMMPS's bar
constant differs from ase.units' in the 8th digit); periodic cells smaller than the ghost shell,
open systems and one whose atoms all lie on one rank's side; an NPT run's final pressure against
the calculator's stress on its final frame. The input lines are the ones export_mliap prints, with
the halo exchange (its default) and with ghosts evaluated on every rank (``halo=False``).
"""

import re

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from conftest import maxwell_boltzmann

from ase_eqgnn import EqGNNCalculator, save_model
from ase_eqgnn.lammps import export_mliap
from ase_eqgnn.models import MODEL_NAMES, build_model
from ase_eqgnn.pretrained import resolve_model
from test_lammps_support import (THERMO, VIRIAL_PRESSURE, assert_nve_like_ase, needs_build,
                                 pressure_to_stress, read_final_frame, read_forces, read_thermo,
                                 run_lmp, write_data)

SMALL = {"egnn": dict(features=8, layers=2), "painn": dict(features=8, layers=2),
         "tp": dict(features=4, l_max=1, layers=2, radial_hidden=8)}

pytestmark = [needs_build, pytest.mark.slow]


def small_model(name):
    torch.manual_seed(11)
    return build_model(name, ["Cu", "Ni"], 3.2, **SMALL.get(name, dict(layers=2)))


def periodic_cuni():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))  # 7.2 Å < 8.4 Å ghost cutoff
    atoms.symbols[::3] = "Ni"
    atoms.rattle(0.1, seed=5)
    return atoms


def open_cuni():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.symbols[1::4] = "Ni"
    atoms.rattle(0.1, seed=6)
    atoms.set_cell([20.0, 20.0, 20.0])
    atoms.center()
    atoms.pbc = False
    return atoms


def section(lines, data, boundary, dump):
    return "\n".join(["units metal", "atom_style atomic", f"boundary {boundary}",
                      f"read_data {data}", *lines, VIRIAL_PRESSURE + THERMO.rstrip(),
                      f"dump d all custom 1 {dump} id fx fy fz",
                      "dump_modify d format float %.17g", "run 0", "undump d"])


def reference(model, atoms):
    atoms = atoms.copy()
    atoms.calc = EqGNNCalculator(model, dtype="float64", keep_freed_memory=False)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def one_sided_cuni():
    """An open system whose atoms all lie in one half of the box: on 2 ranks, one owns nothing."""
    atoms = open_cuni()
    atoms.positions[:, 0] += 1.0 - atoms.positions[:, 0].min()
    assert atoms.positions[:, 0].max() < 10.0
    return atoms


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("halo", [True, False], ids=["halo", "recompute"])
def test_equals_calculator(tmp_path, name, ranks, halo):
    model = small_model(name).double()
    save_model(model, tmp_path / "model.pt")
    exported = export_mliap(str(tmp_path / "model.pt"), tmp_path / "model.mliap.pkl", halo=halo)
    species = exported.unified.element_types
    systems = {"periodic": (periodic_cuni(), "p p p"), "open": (open_cuni(), "f f f"),
               "one-sided": (one_sided_cuni(), "f f f")}
    parts = []
    for label, (atoms, boundary) in systems.items():
        write_data(atoms, tmp_path / f"{label}.data", species)
        parts.append(section(exported.input_lines, f"{label}.data", boundary, f"{label}.dump"))
    (tmp_path / "in.lmp").write_text("\nclear\n".join(parts) + "\n")
    proc = run_lmp("in.lmp", ranks, tmp_path)
    rows = read_thermo(proc.stdout)
    assert len(rows) == len(systems)
    for row, (label, (atoms, _)) in zip(rows, systems.items()):
        ref = reference(model, atoms)
        assert abs(row["PotEng"] - ref["energy"]) < 1e-9, label
        forces = read_forces(tmp_path / f"{label}.dump")
        assert np.abs(ref["forces"]).max() > 1e-4
        np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10, err_msg=label)
        if "stress" in ref:
            np.testing.assert_allclose(pressure_to_stress(row, units.bar), ref["stress"], rtol=0,
                                       atol=1e-6 * np.abs(ref["stress"]).max())


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("halo", [True, False], ids=["halo", "recompute"])
def test_npt_pressure_equals_calculator_stress(tmp_path, ranks, halo):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=8)
    write_data(atoms, tmp_path / "system.data", ["Cu"])
    exported = export_mliap("cu-emt", tmp_path / "cu.mliap.pkl", halo=halo)
    (tmp_path / "in.lmp").write_text("\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "read_data system.data",
        *exported.input_lines, "velocity all create 300 7", VIRIAL_PRESSURE + THERMO.rstrip(),
        "thermo 5", "timestep 0.002", "fix 1 all npt temp 300 300 0.1 iso 0 0 1.0", "run 20",
        "write_dump all custom final.dump id type x y z modify format float %.17g", ""]))
    proc = run_lmp("in.lmp", ranks, tmp_path)
    row = read_thermo(proc.stdout)[-1]
    final = read_final_frame(tmp_path / "final.dump", ["Cu"])
    assert abs(final.get_volume() - atoms.get_volume()) > 1e-3  # the box did change
    ref = reference(str(resolve_model("cu-emt")), final)
    np.testing.assert_allclose(pressure_to_stress(row, units.bar), ref["stress"], rtol=0,
                               atol=1e-6 * np.abs(ref["stress"]).max())
    assert abs(row["PotEng"] - ref["energy"]) < 1e-8


def test_nve_on_two_ranks_with_the_halo_conserves_energy_like_ase(tmp_path):
    """200 steps at 600 K on 2 ranks with a 0.3 Å skin, so LAMMPS re-neighbours and moves atoms
    between ranks; the energy drifts no more than in ASE's VelocityVerlet."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.08, seed=2)
    maxwell_boltzmann(atoms, 600, np.random.default_rng(5))
    write_data(atoms, tmp_path / "system.data", ["Cu"], velocities=True)
    exported = export_mliap("cu-emt", tmp_path / "cu.mliap.pkl")
    (tmp_path / "in.lmp").write_text("\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "read_data system.data",
        *exported.input_lines, "neighbor 0.3 bin", "neigh_modify every 1 delay 0 check yes",
        VIRIAL_PRESSURE + THERMO.rstrip(), "thermo 10", "timestep 0.002",
        "fix 1 all nve", "run 200", ""]))
    proc = run_lmp("in.lmp", 2, tmp_path)
    assert int(re.findall(r"Neighbor list builds = (\d+)", proc.stdout)[-1]) >= 10
    totals = [row["TotEng"] for row in read_thermo(proc.stdout)]
    assert_nve_like_ase(totals, atoms, str(resolve_model("cu-emt")))


def test_atoms_too_close_on_one_rank_stop_both_ranks(tmp_path):
    """With the halo, a rank that cannot go on makes every rank stop (no rank left waiting in an
    exchange): LAMMPS exits with the model's error instead of hanging."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 3, 3))
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    write_data(atoms, tmp_path / "system.data", ["Cu"])
    exported = export_mliap("cu-emt", tmp_path / "cu.mliap.pkl")
    (tmp_path / "in.lmp").write_text("\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "read_data system.data",
        *exported.input_lines, "run 0", ""]))
    proc = run_lmp("in.lmp", 2, tmp_path, timeout=300, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "0.05 Å apart" in output and "stopped the model" in output
