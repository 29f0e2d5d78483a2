"""`EqGNNMLIAP`: an ase_eqgnn potential as LAMMPS's ML-IAP "unified" model.

LAMMPS (built with ML-IAP Python support) loads the object from a pickle named in

    pair_style   mliap unified MODEL.mliap.pkl 1      # 1: ghost atoms get neighbour lists too
    pair_coeff   * * Cu                               # LAMMPS atom types -> the model's elements
    comm_modify  cutoff 11.0                          # >= layers x cutoff + neighbour skin

and calls :meth:`EqGNNMLIAP.compute_forces` every step with a ``data`` object that holds its pair
list over local *and ghost* atoms (``pair_i``, ``pair_j``, ``rij = x_j - x_i``, ``elems``,
``nlocal``, ``ntotal``, ``npairs``, ``iatoms``/``nlistatoms``). With E_i the model's per-atom
energies on that graph and L the local atoms,

    energy = sum_{i in L} E_i,      eatoms[ii] = E_{iatoms[ii]},
    fij    = d(sum_{i in L} E_i) / d rij            for every pair, ghost-ghost pairs included,

and ``update_pair_forces(fij)`` adds ``fij`` to atom i and subtracts it from atom j; LAMMPS folds
the forces on ghosts back onto their owners and tallies the virial ``-rij (x) fij``. This is exact
when every local atom's layers x cutoff neighbourhood is present with complete neighbour lists,
hence the ghost neighbour lists and the communication cutoff.

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
from .model import (ModelLike, check_min_distance, energies_and_pair_gradients, load_potential,
                    prepare, receptive_field, resolve_device, resolve_dtype)

try:  # the abstract base LAMMPS expects, where LAMMPS's Python module is importable
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _UnifiedBase
except Exception:  # no LAMMPS (or one without ML-IAP): the same attributes, set by hand below
    _UnifiedBase = object


def _as_numpy(array, dtype) -> np.ndarray:
    """A C-contiguous numpy copy/view of one of ``data``'s arrays (LAMMPS gives numpy views)."""
    return np.ascontiguousarray(np.asarray(array), dtype=dtype)


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
        ``data.update_pair_forces`` (see the module docstring for the maths)."""
        if self.keep_freed_memory and not self._heap_set and self.device.type == "cpu":
            heap.keep_freed_memory()
            self._heap_set = True
        device, dtype = self.device, self.model.dtype
        ntotal, npairs = int(data.ntotal), int(data.npairs)
        nlist = int(data.nlistatoms)
        elems = torch.as_tensor(_as_numpy(data.elems, np.int64)[:ntotal], device=device)
        if elems.numel() and bool((elems < 0).any()):
            raise ValueError("atom types mapped to NULL in pair_coeff are not supported by "
                             "EqGNNMLIAP: map every type to one of " + " ".join(self.element_types))
        species = self._species_of_element.index_select(0, elems)
        if data.iatoms is not None:
            local = _as_numpy(data.iatoms, np.int64)[:nlist]
        else:
            local = np.arange(nlist, dtype=np.int64)
        local = torch.as_tensor(local, device=device)
        if npairs > 0:
            edge_index = torch.as_tensor(np.stack([_as_numpy(data.pair_i, np.int64)[:npairs],
                                                   _as_numpy(data.pair_j, np.int64)[:npairs]]),
                                         device=device)
            vec = torch.as_tensor(_as_numpy(data.rij, np.float64)[:npairs], device=device,
                                  dtype=dtype)
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long, device=device)
            vec = torch.zeros(0, 3, dtype=dtype, device=device)
        check_min_distance(vec, self.min_distance, lambda e: "two atoms (indices {} and {} on this "
                           "rank)".format(*edge_index[:, e].tolist()))
        energies, grad = energies_and_pair_gradients(self.model, species, edge_index, vec, local)
        eatoms = energies.index_select(0, local).to(torch.float64).cpu().numpy()
        if nlist:
            data.eatoms = np.ascontiguousarray(eatoms)
        data.energy = float(eatoms.sum())
        if npairs > 0:
            data.update_pair_forces(np.ascontiguousarray(grad.to(torch.float64).cpu().numpy()))

    def __repr__(self) -> str:
        return (f"EqGNNMLIAP({self.model.config['name']}, elements={self.element_types}, "
                f"cutoff={2 * self.rcutfac} Å, layers x cutoff={self.receptive_field} Å, "
                f"dtype={self.dtype_name}, device={self.device})")


__all__ = ["EqGNNMLIAP"]
