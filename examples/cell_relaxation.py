"""Relax the positions and the cell of a strained, rattled Cu crystal with the bundled EMT-trained
potential (BFGS on ASE's FrechetCellFilter), then compare the lattice constant with EMT itself.

    python examples/cell_relaxation.py
"""

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from ase_eqgnn import EqGNNCalculator


def relaxed_lattice_constant(calc, n_cells=3):
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(n_cells)
    atoms.rattle(0.05, seed=0)
    atoms.calc = calc
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=500)
    return (atoms.get_volume() / len(atoms) * 4) ** (1 / 3), atoms


def main():
    a_model, atoms = relaxed_lattice_constant(EqGNNCalculator.from_pretrained("cu-emt", dtype="float64"))
    a_emt, _ = relaxed_lattice_constant(EMT())
    stress = atoms.get_stress()
    print(f"relaxed fcc lattice constant: model {a_model:.4f} Å, EMT {a_emt:.4f} Å "
          f"(difference {100 * (a_model - a_emt) / a_emt:+.2f} %); residual |stress| "
          f"{np.abs(stress).max():.2e} eV/Å^3")


if __name__ == "__main__":
    main()
