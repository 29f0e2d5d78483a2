"""From an MD trajectory to a trained potential to a stable MD run, in one script.

1. Reference data: ASE EMT Langevin MD of fcc Cu (made here, seconds).
2. Train a small PaiNN on it with the project's trainer (a short wall-time budget).
3. Run NVE MD with the trained model and report the energy drift.

    python examples/train_then_simulate.py [--train-seconds 60] [--workdir example_run]
"""

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.simulate import run_md, thermalize
from ase_eqgnn.train import TrainConfig, train


def reference_trajectory(path: Path, frames: int = 60) -> None:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EMT()
    thermalize(atoms, 800, np.random.default_rng(0))
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=800, friction=0.02, rng=np.random.default_rng(1))
    images = []
    for _ in range(frames):
        dyn.run(5)
        snap = atoms.copy()
        snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(), stress=atoms.get_stress())
        images.append(snap)
    write(path, images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-seconds", type=float, default=60)
    parser.add_argument("--workdir", default="example_run")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(exist_ok=True)
    data = work / "cu_md.extxyz"
    reference_trajectory(data)
    print(f"1. reference MD: {data}")

    cfg = TrainConfig(data=str(data), model="painn", hparams={"features": 32, "layers": 2},
                      cutoff=4.5, out=str(work / "run"), max_epochs=200, max_time=args.train_seconds,
                      batch_size=4, lr=5e-3, forces_weight=100.0, stress_weight=10.0, device="cpu",
                      progress=False)
    result = train(cfg)
    print(f"2. trained: {work / 'run' / 'best.pt'} ({result})")

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    calc = EqGNNCalculator(str(work / "run" / "best.pt"), dtype="float64")
    summary = run_md(atoms, calc, "nve", temperature_K=600, timestep_fs=2.0, steps=500, interval=10,
                     traj=str(work / "nve.traj"), log=str(work / "nve.csv"), plot=str(work / "nve.png"),
                     progress=False)
    print(f"3. NVE MD: {summary.message}; drift {summary.energy_drift_meV_per_atom_per_ps:.3f} "
          f"meV/atom/ps; T = {summary.temperature_mean_K:.0f} ± {summary.temperature_std_K:.0f} K")


if __name__ == "__main__":
    main()
