"""Reading labelled frames (energies, forces, stress) from MD trajectories and datasets.

``read_dataset(path)`` reads ASE formats (extxyz, ``.traj``, ``.db``) and the two npz layouts
(``R, z, E, F`` as in MD17, in kcal/mol unless told; ``pos, atomic_numbers, energy, forces`` in eV);
``read_dataset("md.h5", energies="md.npz")`` reads an mdtraj trajectory with its labels beside it.

>>> import os, tempfile
>>> from ase.build import bulk
>>> from ase.calculators.emt import EMT
>>> from ase.io import write
>>> from ase_eqgnn.data import read_dataset, split_dataset
>>> atoms = bulk("Cu", cubic=True); atoms.calc = EMT(); e = atoms.get_potential_energy()
>>> path = os.path.join(tempfile.mkdtemp(), "cu.extxyz")
>>> write(path, [atoms] * 20)         # energies and forces go along
>>> frames = read_dataset(path)
>>> frames[0].forces.shape
(4, 3)
>>> train, valid = split_dataset(frames, valid_fraction=0.1, seed=0)
>>> len(train), len(valid)
(18, 2)

Everything returned is in eV and Å (``ase_eqgnn.data.units`` holds the conversion constants)."""

from . import units
from .readers import MDTRAJ_EXTENSIONS, Frame, frames_to_atoms, read_dataset, split_dataset

__all__ = ["Frame", "read_dataset", "split_dataset", "frames_to_atoms", "MDTRAJ_EXTENSIONS", "units"]
