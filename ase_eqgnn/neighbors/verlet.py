"""A neighbour list reused across MD steps with a Verlet skin."""

from __future__ import annotations

import numpy as np
import torch

from .backends import vesin_available, vesin_neighbor_list
from .cell_list import Pairs, batched_neighbor_list, image_offsets, neighbor_list
from .inputs import as_positions, check_cutoff, check_length


class VerletList:
    """A neighbour list reused across MD steps with a Verlet skin.

    The list is built with ``cutoff + skin`` and kept while no atom moved more than ``skin / 2`` since
    the build and the cell, pbc, atom count, atomic numbers and batch are unchanged (every element is
    compared). Each call returns only the pairs within the true ``cutoff``, from the current positions.

    >>> import torch
    >>> nl = VerletList(cutoff=3.0, skin=0.5)
    >>> pos = torch.rand(20, 3, dtype=torch.float64) * 6
    >>> i, j, S = nl(pos)
    >>> _ = nl(pos + 0.1)  # moved 0.1*sqrt(3) < 0.25 Å: no rebuild
    >>> nl.builds
    1
    """

    def __init__(self, cutoff: float, skin: float = 0.5, backend: str = "torch"):
        """``backend``: "torch" (this module's cell list), "vesin" (vesin-torch, single structures)
        or "auto" (vesin for single structures when it is installed, else torch)."""
        self.cutoff = check_cutoff(cutoff)
        if backend not in ("torch", "vesin", "auto"):
            raise ValueError(f"backend must be 'torch', 'vesin' or 'auto', got {backend!r}")
        if backend == "vesin" and not vesin_available():
            raise ValueError("backend='vesin' needs the vesin-torch package: pip install vesin-torch")
        self.backend = backend
        self.skin = check_length(skin, "skin")
        self.builds = 0
        self._ref = None  # (positions, cell, pbc, numbers, batch) at the last build
        self._pairs = None
        self._offsets = None  # the stored pairs' S @ cell (fixed until a rebuild), in one dtype

    @property
    def built_pairs(self):
        """The stored list as built, ``(i, j, shifts)``: every pair within ``cutoff + skin`` at the
        last build (None before the first call)."""
        return self._pairs

    def reset(self) -> None:
        """Forget the stored list; the next call rebuilds."""
        self._ref = None
        self._pairs = None
        self._offsets = None

    def needs_rebuild(self, positions: torch.Tensor, cell=None, pbc=None, numbers=None,
                      batch=None) -> bool:
        """Whether a call with these arguments would rebuild the list (same arguments as the call).
        """
        positions = as_positions(positions)
        return self._needs_rebuild(positions, *self._as_tensors(positions.device, cell, pbc,
                                                                numbers, batch))

    @staticmethod
    def _as_tensors(dev, cell, pbc, numbers, batch):
        """``cell``, ``pbc``, ``numbers``, ``batch`` as tensors on ``dev`` (None stays None)."""
        cell_t = None if cell is None else torch.as_tensor(cell, device=dev).detach()
        pbc_t = None if pbc is None else torch.as_tensor(np.asarray(pbc.cpu()) if isinstance(
            pbc, torch.Tensor) else np.asarray(pbc), device=dev)
        numbers_t = None if numbers is None else torch.as_tensor(numbers, device=dev)
        batch_t = None if batch is None else torch.as_tensor(batch, device=dev)
        return cell_t, pbc_t, numbers_t, batch_t

    def _needs_rebuild(self, positions, cell, pbc, numbers, batch) -> bool:
        if self._ref is None:
            return True
        r_pos, r_cell, r_pbc, r_numbers, r_batch = self._ref
        if positions.shape != r_pos.shape or positions.device != r_pos.device:
            return True
        for new, old in ((cell, r_cell), (pbc, r_pbc), (numbers, r_numbers), (batch, r_batch)):
            if (new is None) != (old is None):
                return True
            if new is not None and (new.shape != old.shape or not torch.equal(new, old)):
                return True
        if positions.shape[0] == 0 or self.skin == 0:
            return self.skin == 0
        moved = (positions.detach() - r_pos).square().sum(-1).max()
        return bool(moved > (0.5 * self.skin) ** 2)

    def __call__(self, positions: torch.Tensor, cell=None, pbc=None, numbers=None,
                 batch=None, prune: bool = True) -> Pairs:
        """Pairs within ``cutoff`` for ``positions`` [N, 3] (``cell``/``pbc``/``batch`` as in
        :func:`batched_neighbor_list`; ``numbers`` only participates in the change test).

        ``prune=False`` returns the stored list itself: every pair within ``cutoff + skin`` at the
        last build, a superset of the pairs within ``cutoff`` now, and the same tensors until the
        next rebuild (for a model whose cutoff envelope zeroes the extra pairs, as a CUDA graph
        needs fixed shapes)."""
        positions = as_positions(positions)
        # Compared as given; copied only when stored at a rebuild (the caller may reuse its arrays).
        cell_t, pbc_t, numbers_t, batch_t = self._as_tensors(positions.device, cell, pbc, numbers,
                                                             batch)
        if self._needs_rebuild(positions, cell_t, pbc_t, numbers_t, batch_t):
            cell_t, pbc_t, numbers_t, batch_t = (None if t is None else t.clone()
                                                 for t in (cell_t, pbc_t, numbers_t, batch_t))
            single = batch_t is None and (cell_t is None or cell_t.ndim == 2)
            use_vesin = single and (self.backend == "vesin" or (
                self.backend == "auto" and vesin_available()))
            if use_vesin:
                i, j, s = vesin_neighbor_list(positions, self.cutoff + self.skin, cell_t, pbc_t)
            elif single:
                i, j, s = neighbor_list(positions, self.cutoff + self.skin, cell_t, pbc_t)
            else:
                i, j, s = batched_neighbor_list(positions, self.cutoff + self.skin, batch_t, cell_t,
                                                pbc_t)
            self._pairs, self._offsets = (i, j, s), None
            self._ref = (positions.detach().clone(), cell_t, pbc_t, numbers_t, batch_t)
            # Without a periodic direction every shift is zero: the filter below can skip them.
            self._periodic = cell_t is not None and pbc_t is not None and bool(pbc_t.any())
            self.builds += 1
        return self._prune(positions) if prune else self._pairs

    def within_cutoff(self, positions: torch.Tensor) -> Pairs:
        """The pairs of the stored list that are within ``cutoff`` at ``positions`` (no rebuild
        check: call the list first)."""
        return self._prune(as_positions(positions))

    def _prune(self, positions: torch.Tensor) -> Pairs:
        """:meth:`within_cutoff` for positions already checked by :func:`as_positions`."""
        i, j, s = self._pairs
        if i.numel() == 0:
            return i, j, s
        pos = positions.detach()
        vec = pos.index_select(0, j) - pos.index_select(0, i)
        if self._periodic:
            if self._offsets is None or self._offsets.dtype != pos.dtype:  # once per build
                _, cell, _, _, batch = self._ref
                self._offsets = image_offsets(s, cell.to(pos.dtype),
                                              None if batch is None else batch.index_select(0, i))
            vec = vec + self._offsets
        keep = ((vec * vec).sum(-1) < self.cutoff * self.cutoff).nonzero().squeeze(1)
        return i.index_select(0, keep), j.index_select(0, keep), s.index_select(0, keep)
