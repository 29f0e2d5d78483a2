"""Langevin MD of alanine dipeptide with the bundled potential, through plain ASE.

    python examples/langevin_md.py [--steps 400]
"""

import argparse

import numpy as np
from ase import units
from ase.io import Trajectory
from ase.md.langevin import Langevin

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.simulate import thermalize
from ase_eqgnn.structures import load_structure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="ala2_langevin.traj")
    args = parser.parse_args(argv)

    atoms = load_structure("ala2")
    atoms.calc = EqGNNCalculator.from_pretrained("ala2", device="cpu")
    thermalize(atoms, 300, np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                   rng=np.random.default_rng(1))
    traj = Trajectory(args.out, "w", atoms)
    dyn.attach(traj.write, interval=20)
    temperatures = []
    dyn.attach(lambda: temperatures.append(atoms.get_temperature()), interval=10)
    dyn.run(args.steps)
    traj.close()
    print(f"{args.steps} steps; mean temperature {np.mean(temperatures[len(temperatures) // 2:]):.0f} K; "
          f"final energy {atoms.get_potential_energy():.3f} eV; trajectory {args.out}")


if __name__ == "__main__":
    main()
