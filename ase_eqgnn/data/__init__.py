"""Reading labelled frames (energies, forces, stress) from MD trajectories and datasets.

>>> from ase_eqgnn.data import read_dataset, split_dataset
>>> frames = read_dataset("train.npz")                      # MD17-style npz, ASE extxyz/.traj/.db ...
>>> frames = read_dataset("ala2_train.h5", energies="ala2_train.npz")   # mdtraj trajectory + npz
>>> train, valid = split_dataset(frames, valid_fraction=0.05, seed=0)

Everything returned is in eV and Å (``ase_eqgnn.data.units`` holds the conversion constants).
"""

from . import units
from .readers import MDTRAJ_EXTENSIONS, Frame, frames_to_atoms, read_dataset, split_dataset

__all__ = ["Frame", "read_dataset", "split_dataset", "frames_to_atoms", "MDTRAJ_EXTENSIONS", "units"]
