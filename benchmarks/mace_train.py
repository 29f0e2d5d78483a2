"""MACE trained by its own ``mace_run_train`` CLI for a wall-time budget, tested by its own calculator.

Used by ``benchmarks/accuracy.py``. MACE runs in a separate environment (``--mace-python``, the python
of a venv with mace-torch; see ``benchmarks/setup_anchors.sh``): every step is a subprocess.

:func:`train_mace` converts our ``.npz`` files to extxyz (``REF_energy`` / ``REF_forces``), starts
``python -m mace.cli.run_train`` with the given settings (optionally pinned to one core with
``taskset``), stops it at the budget when it has not finished, restarts it with ``--restart_latest``
only to turn its best checkpoint (MACE saves one whenever the validation loss improves) into a model
file, and evaluates that model with ``MACECalculator`` in float64 on each test set. Errors are in the
units of ``ase_eqgnn.train.metrics``: meV/atom for energies, meV/Å for force components.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ase_eqgnn.data import read_dataset  # noqa: E402

EVAL_SCRIPT = r"""
import json, sys, numpy as np, ase.io
from mace.calculators import MACECalculator
model, test, device = sys.argv[1], sys.argv[2], sys.argv[3]
calc = MACECalculator(model_paths=model, device=device, default_dtype="float64")
e, f = [], []
for atoms in ase.io.read(test, ":"):
    ref_e, ref_f = atoms.info["REF_energy"], atoms.arrays["REF_forces"].copy()
    atoms.calc = calc
    e.append((atoms.get_potential_energy() - ref_e) / len(atoms))
    f.append(atoms.get_forces() - ref_f)
e, f = np.array(e), np.concatenate(f)
print(json.dumps({"energy_mae": 1e3 * float(np.abs(e).mean()), "energy_rmse": 1e3 * float(np.sqrt((e**2).mean())),
                  "forces_mae": 1e3 * float(np.abs(f).mean()), "forces_rmse": 1e3 * float(np.sqrt((f**2).mean()))}))
"""


def write_extxyz(data: pathlib.Path, path: pathlib.Path) -> None:
    """Our data file (any format ``read_dataset`` reads) as extxyz with REF_energy / REF_forces."""
    import ase.io

    atoms_list = []
    for frame in read_dataset(data):
        atoms = frame.to_atoms()
        atoms.calc = None
        atoms.info = {"REF_energy": frame.energy}
        atoms.arrays["REF_forces"] = frame.forces
        atoms_list.append(atoms)
    ase.io.write(path, atoms_list, format="extxyz")


def run_with_budget(cmd: List[str], budget: Optional[float], log: pathlib.Path, env: Dict) -> int:
    """Run ``cmd`` (output appended to ``log``); stop its process group after ``budget`` s (rc -1)."""
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return -1


def pinned(cmd: List[str], core: Optional[int]) -> List[str]:
    """``cmd`` under ``taskset -c core`` (unchanged when core is None)."""
    return cmd if core is None else ["taskset", "-c", str(core)] + cmd


def one_thread_env(threads: int = 1) -> Dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def train_mace(python: str, train: pathlib.Path, valid: pathlib.Path, tests: Dict[str, pathlib.Path],
               out: pathlib.Path, budget: float, settings: List[str], *, core: Optional[int] = None,
               threads: int = 1, device: str = "cpu", epochs: Optional[int] = None) -> Dict:
    """Train MACE with ``settings`` (mace_run_train flags) for at most ``budget`` s; test errors.

    ``epochs`` (MACE's ``--max_num_epochs``) defaults to "more than fit", so the budget stops the
    run; MACE's default schedule (ReduceLROnPlateau) does not depend on the epoch count. Returns
    ``{"tests": {label: metrics}, "epochs", "train_wall_s", "total_wall_s"}`` or ``{"error": ...}``.
    """
    if out.exists():
        shutil.rmtree(out)  # a benchmark starts fresh (its own output directory only)
    out.mkdir(parents=True)
    files = {"train": out / "train.xyz", "valid": out / "valid.xyz"}
    write_extxyz(train, files["train"])
    write_extxyz(valid, files["valid"])
    for label, path in tests.items():
        files[f"test_{label}"] = out / f"test_{label}.xyz"
        write_extxyz(path, files[f"test_{label}"])
    base = [python, "-m", "mace.cli.run_train", "--name", "mace", "--seed", "0",
            "--train_file", str(files["train"]), "--valid_file", str(files["valid"]),
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--device", device,
            "--model_dir", str(out), "--checkpoints_dir", str(out / "checkpoints"),
            "--log_dir", str(out / "logs"), "--results_dir", str(out / "results")] + list(settings)
    env = one_thread_env(threads)
    log = out / "mace_stdout.log"
    t0 = time.perf_counter()
    rc = run_with_budget(pinned(base + ["--max_num_epochs", str(epochs or 100000)], core), budget, log, env)
    train_wall = time.perf_counter() - t0
    done_epochs = [int(m.group(1)) for m in re.finditer(r"Epoch (\d+):", log.read_text(errors="replace"))]
    ckpts = sorted(((int(m.group(1)), p) for p in (out / "checkpoints").glob("*.pt")
                    if (m := re.search(r"epoch-(\d+)", p.name))), key=lambda t: t[0])
    if not ckpts:
        return {"error": f"MACE wrote no checkpoint within {budget:.0f} s (rc {rc}); see {log}",
                "train_wall_s": train_wall}
    best_epoch = ckpts[-1][0]
    if rc == -1:  # stopped by the budget: restart only to write the best checkpoint as a model
        run_with_budget(pinned(base + ["--max_num_epochs", str(best_epoch), "--restart_latest"], core),
                        1800, log, env)
    models = [p for p in out.glob("mace*.model") if "compiled" not in p.name and "swa" not in p.name]
    if not models:
        return {"error": f"MACE did not write a model; see {log}", "train_wall_s": train_wall}
    results = {}
    for label in tests:
        done = subprocess.run(pinned([python, "-c", EVAL_SCRIPT, str(models[0]), str(files[f"test_{label}"]),
                                      device], core), capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return {"error": f"MACE evaluation failed: {done.stderr[-500:]}", "train_wall_s": train_wall}
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tests": results, "epochs": (max(done_epochs) + 1) if done_epochs else best_epoch + 1,
            "best_epoch": best_epoch + 1, "train_wall_s": train_wall,
            "total_wall_s": time.perf_counter() - t0, "settings": list(settings)}
