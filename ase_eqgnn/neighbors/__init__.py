"""Neighbour lists: which atom pairs are closer than a cutoff, with periodic images.

Every function returns a *full* list (both directions) as three int64 tensors ``(i, j, shifts)``
such that the vector from atom ``i`` to atom ``j`` is

    r_ij = positions[j] - positions[i] + shifts @ cell,      |r_ij| < cutoff,

the same set of ``(i, j, shift)`` triples as ``ase.neighborlist.neighbor_list("ijS", atoms, cutoff)``.
The list is integer data: models recompute distances from positions so that gradients flow.

==========================  ==========================================================================
module                      what it holds
==========================  ==========================================================================
:mod:`.cell_list`           the O(N) torch cell list (:func:`neighbor_list`, :func:`batched_neighbor_list`)
:mod:`.verlet`              :class:`VerletList`: a list reused across MD steps with a skin
:mod:`.backends`            optional backends: vesin-torch (single structures), torch-cluster (CUDA)
:mod:`.frame`               the lattice frame the cell list bins in
:mod:`.screening`           float32 candidate screening with an exact float64 band; packed shifts
:mod:`.inputs`              the checks of cutoff, positions, cells and pbc that every list shares
==========================  ==========================================================================

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> atoms = bulk("Cu", "fcc", a=3.6)
>>> i, j, S = neighbor_list(torch.tensor(atoms.positions), 3.0, torch.tensor(atoms.cell[:]), [True] * 3)
>>> int(i.numel())  # 12 nearest neighbours of the one atom, all images of itself
12
"""

from .backends import cluster_available, cluster_neighbor_list, vesin_available, vesin_neighbor_list
from .cell_list import Pairs, batched_neighbor_list, image_offsets, neighbor_list
from .verlet import VerletList

__all__ = ["Pairs", "neighbor_list", "batched_neighbor_list", "image_offsets", "VerletList",
           "vesin_available", "vesin_neighbor_list", "cluster_available", "cluster_neighbor_list"]
