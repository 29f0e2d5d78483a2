"""`EqGNNMLIAP`: an ase_eqgnn potential as LAMMPS's ML-IAP "unified" model.

LAMMPS (built with ML-IAP Python support) loads the object from a pickle named in

    pair_style   mliap unified MODEL.mliap.pkl 0      # 0: ghosts need no neighbour lists
    pair_coeff   * * Cu                               # LAMMPS atom types -> the model's elements
    python       eqgnn_attach input 1 SELF format p here "from ase_eqgnn.lammps.halo import ..."
    python       eqgnn_attach invoke                  # binds LAMMPS: the halo exchange

and calls :meth:`EqGNNMLIAP.compute_forces` every step with a ``data`` object that holds its pair
list over local and ghost atoms (``pair_i``, ``pair_j``, ``rij = x_j - x_i``, ``elems``,
``nlocal``, ``ntotal``, ``npairs``, ``iatoms``/``nlistatoms``). With E_i the model's per-atom
energies and L the local atoms of a rank,

    energy = sum_{i in L} E_i,      eatoms[ii] = E_{iatoms[ii]},
    fij    = d(sum_{ranks} sum_{i in L} E_i) / d rij      for every pair handed over,

and ``update_pair_forces(fij)`` adds ``fij`` to atom i and subtracts it from atom j; LAMMPS folds
the forces on ghosts back onto their owners and tallies the virial ``-rij (x) fij``.

With the halo exchange (:mod:`.halo`; the two ``python`` lines) only the pairs centred on local atoms
are evaluated, and ghosts take their owners' features before every layer but the first, so each
pair's force counts every rank's energy. Without it (``pair_style ... 1``, ``comm_modify cutoff``
>= layers x cutoff + skin), each rank evaluates its ghosts within ``layers`` pairs too and ``fij``
is the derivative of its own atoms' energies alone, ghost-ghost pairs included: exact when every
local atom's layers x cutoff neighbourhood is present with complete neighbour lists.

The pickle names this class and nothing else: :meth:`__reduce__` stores the model as the bytes of
an :func:`ase_eqgnn.save_model` file (tensors and a JSON config), rebuilt on loading with
:func:`ase_eqgnn.load_model`. Unpickling any file still runs code named by the file: load ML-IAP
files only from sources you trust.

Example (no LAMMPS needed to build one)
---------------------------------------
>>> from ase_eqgnn.models import build_model
>>> unified = EqGNNMLIAP(build_model("painn", ["Cu"], cutoff=4.0, features=8, layers=2))
>>> unified.element_types, unified.rcutfac   # LAMMPS's pair cutoff is 2 x rcutfac
(['Cu'], 2.0)
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import chemical_symbols

from .. import heap
from . import halo
from .model import (ModelLike, check_min_distance, energies_and_pair_gradients, load_potential,
                    owned_and_neighbours, prepare, prune_to_hops, receptive_field, resolve_device,
                    resolve_dtype)

try:  # the abstract base LAMMPS expects, where LAMMPS's Python module is importable
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _UnifiedBase
except Exception:  # no LAMMPS (or one without ML-IAP): the same attributes, set by hand below
    _UnifiedBase = object


def _tensor(array, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One of ``data``'s arrays as a tensor: numpy views (LAMMPS on the CPU) or device arrays with
    ``__cuda_array_interface__`` (LAMMPS's KOKKOS build hands over cupy arrays; untested here)."""
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(array))
    return torch.as_tensor(array, device=device).to(dtype)


class EqGNNMLIAP(_UnifiedBase):
    """ML-IAP unified implementation of an ase_eqgnn potential (every model family).

    Parameters
    ----------
    model : a checkpoint path, a bundled potential's name, a
        :class:`~ase_eqgnn.models.potential.Potential`, or the bytes of a checkpoint file.
    dtype : "float64" (default; exact against :class:`~ase_eqgnn.EqGNNCalculator` in float64) or
        "float32".
    device : "cpu" or "cuda" (LAMMPS's arrays are copied there and back; untested here).
    min_distance : two atoms closer than this (Å) raise
        :class:`~ase_eqgnn.errors.AtomsTooCloseError` (LAMMPS then stops with an error), as in
        :class:`~ase_eqgnn.EqGNNCalculator`; 0 turns the check off.
    keep_freed_memory : on the CPU, call :func:`ase_eqgnn.heap.keep_freed_memory` at the first
        step, as :class:`~ase_eqgnn.EqGNNCalculator` does by default (process-wide; see there).

    Attributes LAMMPS reads: ``element_types`` (the model's element symbols, in the order of its
    species), ``rcutfac`` (cutoff / 2), ``ndescriptors`` and ``nparams`` (1; unused).
    """

    def __init__(self, model: ModelLike, dtype: str = "float64", device="cpu",
                 min_distance: float = 0.1, keep_freed_memory: bool = True):
        self.dtype_name = resolve_dtype(dtype)
        self.min_distance = float(min_distance)
        if not self.min_distance >= 0:
            raise ValueError(f"min_distance must be a non-negative number of Å, got {min_distance}")
        self.device = resolve_device(device)
        potential, self._checkpoint = load_potential(model)
        self.model = prepare(potential, self.dtype_name, self.device)
        self.keep_freed_memory = bool(keep_freed_memory)
        self._heap_set = False
        species = list(self.model.species)
        init = dict(interface=None, element_types=[chemical_symbols[z] for z in species],
                    ndescriptors=1, nparams=1, rcutfac=0.5 * float(self.model.cutoff))
        if _UnifiedBase is object:
            for key, value in init.items():
                setattr(self, key, value)
        else:
            super().__init__(**init)
        # element index (position in element_types, as LAMMPS's elems holds it) -> species index
        numbers = torch.tensor(species, dtype=torch.long)
        self._species_of_element = self.model.species_index(numbers.to(self.device))
        self.receptive_field = receptive_field(self.model)
        self.layers = int(self.model.config["hparams"]["layers"])

    # ---------------------------------------------------------------- pickling
    def __reduce__(self):
        """Rebuilt from the checkpoint's bytes and plain settings: the pickle names only this class."""
        return (self.__class__, (self._checkpoint, self.dtype_name, str(self.device),
                                 self.min_distance, self.keep_freed_memory))

    # ---------------------------------------------------------------- ML-IAP protocol
    def compute_descriptors(self, data) -> None:
        """Nothing: the model has no separate descriptor stage (everything is in compute_forces)."""

    def compute_gradients(self, data) -> None:
        """Nothing: see :meth:`compute_forces`."""

    def compute_forces(self, data) -> None:
        """Energies of the local atoms into ``data.eatoms``/``data.energy``, pair forces through
        ``data.update_pair_forces`` (see the module docstring for the maths).

        With the halo exchange (:mod:`.halo` bound) only the pairs centred on local atoms are
        evaluated; a rank that cannot go on (atoms too close) stops every rank. Without it, only the
        part of the graph the local energies can see is evaluated (:func:`~.model.prune_to_hops`:
        atoms within ``layers`` pairs of a local atom), and each layer only updates the atoms the
        local energies still depend on. The other pairs get zero forces, their exact derivative."""
        if self.keep_freed_memory and not self._heap_set and self.device.type == "cpu":
            heap.keep_freed_memory()
            self._heap_set = True
        device = self.device
        ntotal, npairs, nlist = int(data.ntotal), int(data.npairs), int(data.nlistatoms)
        host_arrays = npairs == 0 or isinstance(data.rij, np.ndarray)
        source = halo.attached()
        with halo.stop_together(None if source is None else source.comm):
            elems, local, edge_index, vec = self._read(data)
            if source is not None:
                source.check(data)
        if source is None:
            self._check_ghost_lists(edge_index, local, ntotal)
            nodes, kept, sub_edges, hop = prune_to_hops(edge_index, ntotal, local, self.layers)
            nbh = None
        else:
            nodes, kept, sub_edges, hop = owned_and_neighbours(edge_index, ntotal, local)
            nbh = self.model.neighborhood(sub_edges, nodes.numel())
            rank, row = source.owners.locate(source.tags(ntotal), local.numel())
            picked = nodes.cpu().numpy()
            nbh.halo = halo.Halo(rank[picked], row[picked], local.numel(), source.comm).to(device)
        species = self._species_of_element.index_select(0, elems.index_select(0, nodes))
        sub_local = torch.searchsorted(nodes, local)  # nodes are ascending and include every local
        energies, g_kept = energies_and_pair_gradients(self.model, species, sub_edges, vec[kept], hop,
                                                       neighborhood=nbh)
        eatoms = energies.index_select(0, sub_local).to(torch.float64)
        if nlist:
            try:
                data.eatoms = eatoms.cpu().numpy()
            except AttributeError:  # (KOKKOS) a read-only property: the array to fill
                torch.as_tensor(data.eatoms, device=device).copy_(eatoms)
        data.energy = float(eatoms.sum())
        if npairs > 0:
            fij = torch.zeros(npairs, 3, dtype=torch.float64, device=device)
            fij[kept] = g_kept.to(torch.float64)
            data.update_pair_forces(fij.cpu().numpy() if host_arrays else fij.contiguous())

    def _read(self, data):
        """``data``'s element indices [ntotal], local atoms, pairs [2, E] and pair vectors [E, 3] as
        tensors; ValueError for NULL types and atoms closer than ``min_distance``."""
        device, dtype = self.device, self.model.dtype
        ntotal, npairs, nlist = int(data.ntotal), int(data.npairs), int(data.nlistatoms)
        elems = _tensor(data.elems, torch.long, device)[:ntotal]
        if elems.numel() and bool((elems < 0).any()):
            raise ValueError("atom types mapped to NULL in pair_coeff are not supported by "
                             "EqGNNMLIAP: map every type to one of " + " ".join(self.element_types))
        local = (_tensor(data.iatoms, torch.long, device)[:nlist] if data.iatoms is not None
                 else torch.arange(nlist, device=device))
        if npairs > 0:
            edge_index = torch.stack([_tensor(data.pair_i, torch.long, device)[:npairs],
                                      _tensor(data.pair_j, torch.long, device)[:npairs]])
            vec = _tensor(data.rij, dtype, device)[:npairs]
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long, device=device)
            vec = torch.zeros(0, 3, dtype=dtype, device=device)
        check_min_distance(vec, self.min_distance, lambda e: "two atoms (indices {} and {} on this "
                           "rank)".format(*edge_index[:, e].tolist()))
        return elems, local, edge_index, vec

    def _check_ghost_lists(self, edge_index: torch.Tensor, local: torch.Tensor, ntotal: int) -> None:
        """Without the halo exchange, ghosts next to local atoms need neighbour lists of their own
        (``pair_style mliap unified FILE 1``); refuse a pair list that has none."""
        if self.layers < 2 or edge_index.shape[1] == 0 or ntotal == local.numel():
            return
        is_local = torch.zeros(ntotal, dtype=torch.bool, device=edge_index.device)
        is_local[local] = True
        if bool(is_local[edge_index[0]].all()) and not bool(is_local[edge_index[1]].all()):
            raise ValueError("ghost atoms have no neighbour lists, so a multi-layer model is wrong: "
                             "add the halo exchange lines that eqgnn-lammps-export prints, or use "
                             "'pair_style mliap unified FILE 1' with a larger comm_modify cutoff")

    def __repr__(self) -> str:
        return (f"EqGNNMLIAP({self.model.config['name']}, elements={self.element_types}, "
                f"cutoff={2 * self.rcutfac} Å, layers x cutoff={self.receptive_field} Å, "
                f"dtype={self.dtype_name}, device={self.device})")


__all__ = ["EqGNNMLIAP"]
