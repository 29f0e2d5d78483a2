"""The examples run end to end (slow: each takes up to a couple of minutes on 2 CPU cores)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name, *args, cwd):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_langevin_md(tmp_path):
    out = run_example("langevin_md.py", "--steps", "200", "--out", str(tmp_path / "a.traj"), cwd=tmp_path)
    assert "mean temperature" in out and (tmp_path / "a.traj").exists()


@pytest.mark.slow
def test_cell_relaxation(tmp_path):
    out = run_example("cell_relaxation.py", cwd=tmp_path)
    difference = float(out.split("difference ")[1].split(" %")[0])
    assert abs(difference) < 2.0  # the EMT-trained model's lattice constant is within 2 % of EMT's


@pytest.mark.slow
def test_train_then_simulate(tmp_path):
    out = run_example("train_then_simulate.py", "--train-seconds", "40", "--workdir",
                      str(tmp_path / "w"), cwd=tmp_path)
    assert "3. NVE MD: completed" in out
    assert (tmp_path / "w" / "run" / "best.pt").exists()


@pytest.mark.slow
def test_backmap_example(tmp_path):
    out = run_example("backmap_cg.py", "--frames", "20", "--out", str(tmp_path / "aa.pdb"), cwd=tmp_path)
    assert "bond-validity" in out and (tmp_path / "aa.pdb").exists()


@pytest.mark.slow
def test_readme_script_runs_and_relaxes(tmp_path):
    """The README's calculator script, with a short Langevin run: after the cell relaxation the
    forces printed by the script's own calls are small and the stress is near zero."""
    text = (ROOT / "README.md").read_text()
    script = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert ".run(1000)" in script
    script = script.replace(".run(1000)", ".run(5)")
    script += ("\nimport numpy as np\nfrom ase.optimize import BFGS as _B\n"
               "atoms.calc.reset()\n_B(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01)\n"
               "assert np.abs(atoms.get_stress()).max() < 1e-3\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
