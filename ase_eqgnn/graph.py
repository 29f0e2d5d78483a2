"""`AtomicGraph`: the one data structure every part of the package reads and writes.

A graph holds one or many structures concatenated along the atom axis:

====================  =========  =====================================================
field                 shape      meaning
====================  =========  =====================================================
``positions``         [N, 3]     Cartesian positions, Å
``numbers``           [N]        atomic numbers (int64)
``cell``              [B, 3, 3]  one cell per structure, rows are lattice vectors, Å
``pbc``               [B, 3]     periodic directions (bool)
``batch``             [N]        index of the structure each atom belongs to (int64)
``edge_index``        [2, E]     ``(i, j)`` pairs, global atom indices (int64)
``shifts``            [E, 3]     integer cell shifts: r_ij = r_j - r_i + shifts @ cell
====================  =========  =====================================================

Edge vectors are recomputed from ``positions`` and ``cell`` (:func:`edge_vectors`) so that autograd
gives forces and, through a strain on both, the virial. The neighbour list itself is integer data.

Example
-------
>>> from ase.build import bulk
>>> g = AtomicGraph.from_atoms(bulk("Cu", cubic=True)).with_neighbors(cutoff=3.0)
>>> g.num_graphs, g.num_atoms, g.edge_index.shape[1]
(1, 4, 48)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import numpy as np
import torch

from .indexing import gather_rows
from .neighbors import batched_neighbor_list, image_offsets
from .neighbors.frame import centring_translations, wrap_counts


@dataclass
class AtomicGraph:
    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    edge_index: Optional[torch.Tensor] = None
    shifts: Optional[torch.Tensor] = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_atoms(cls, atoms, dtype: torch.dtype = torch.float64, device="cpu") -> "AtomicGraph":
        """One ``ase.Atoms`` as a graph of one structure (no edges yet)."""
        return cls.from_arrays(
            atoms.get_positions(), atoms.get_atomic_numbers(), np.asarray(atoms.cell[:]),
            atoms.get_pbc(), dtype=dtype, device=device,
        )

    @classmethod
    def from_arrays(cls, positions, numbers, cell=None, pbc=None, dtype=torch.float64,
                    device="cpu") -> "AtomicGraph":
        """One structure from arrays: positions [N, 3] Å, numbers [N], cell [3, 3] Å, pbc [3]."""
        positions = torch.as_tensor(np.asarray(positions), dtype=dtype, device=device).reshape(-1, 3)
        numbers = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=device).reshape(-1)
        if numbers.shape[0] != positions.shape[0]:
            raise ValueError(
                f"numbers has {numbers.shape[0]} entries but positions has {positions.shape[0]} rows")
        cell = torch.zeros(3, 3) if cell is None else torch.as_tensor(np.asarray(cell, dtype=float))
        pbc = torch.zeros(3, dtype=torch.bool) if pbc is None else torch.as_tensor(
            np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy())
        return cls(
            positions=positions, numbers=numbers,
            cell=cell.to(dtype=dtype, device=device).reshape(1, 3, 3),
            pbc=pbc.to(device=device).reshape(1, 3),
            batch=torch.zeros(positions.shape[0], dtype=torch.long, device=device),
        )

    @staticmethod
    def collate(graphs: Sequence["AtomicGraph"]) -> "AtomicGraph":
        """Concatenate graphs into one batch (atom indices of edges are offset)."""
        if len(graphs) == 0:
            raise ValueError("cannot batch an empty list of graphs")
        offsets = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
        goffsets = np.cumsum([0] + [g.num_graphs for g in graphs[:-1]])
        has_edges = all(g.edge_index is not None for g in graphs)
        return AtomicGraph(
            positions=torch.cat([g.positions for g in graphs]),
            numbers=torch.cat([g.numbers for g in graphs]),
            cell=torch.cat([g.cell for g in graphs]),
            pbc=torch.cat([g.pbc for g in graphs]),
            batch=torch.cat([g.batch + int(o) for g, o in zip(graphs, goffsets)]),
            edge_index=torch.cat([g.edge_index + int(o) for g, o in zip(graphs, offsets)], dim=1)
            if has_edges else None,
            shifts=torch.cat([g.shifts for g in graphs]) if has_edges else None,
        )

    # ---------------------------------------------------------------- properties
    @property
    def num_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_graphs(self) -> int:
        return int(self.cell.shape[0])

    @property
    def num_edges(self) -> int:
        return 0 if self.edge_index is None else int(self.edge_index.shape[1])

    def atoms_per_graph(self) -> torch.Tensor:
        """Number of atoms in each structure, [B] int64."""
        return torch.bincount(self.batch, minlength=self.num_graphs)

    # ---------------------------------------------------------------- transforms
    def with_neighbors(self, cutoff: float) -> "AtomicGraph":
        """A copy with ``edge_index`` and ``shifts`` from the O(N) cell-list neighbour list."""
        i, j, shifts = batched_neighbor_list(self.positions, cutoff, self.batch, self.cell, self.pbc)
        return replace(self, edge_index=torch.stack([i, j]), shifts=shifts)

    def near_origin(self) -> "AtomicGraph":
        """A copy with every atom moved near the origin and every pair vector unchanged.

        Along periodic directions each atom is wrapped into the cell (its pairs' shifts absorb the
        whole lattice vectors it moved by); along the others each connected piece of the graph is
        centred on the origin (pieces no pair links may move apart freely). Done in float64: a
        float32 copy of the result (``.to(dtype=torch.float32)``) then resolves distances to the
        size of the system rather than to its distance from the origin. Needs the edges
        (:meth:`with_neighbors`).
        """
        if self.edge_index is None:
            raise ValueError("near_origin needs the neighbour list: call with_neighbors(cutoff) first")
        cell = self.cell.detach().cpu().to(torch.float64).numpy()
        pbc = self.pbc.detach().cpu().numpy()
        pos = self.positions.detach().to(torch.float64)
        batch = None if self.num_graphs == 1 else self.batch
        wrap = wrap_counts(pos, cell, pbc, batch)
        shifts = self.shifts
        if bool(wrap.any()):
            cell64 = self.cell.detach().to(torch.float64)
            pos = pos - image_offsets(wrap, cell64, batch)
            i, j = self.edge_index
            shifts = shifts + wrap.index_select(0, j) - wrap.index_select(0, i)
        pos = pos - centring_translations(pos, self.edge_index, cell, pbc, batch)
        return replace(self, positions=pos.to(self.positions.dtype), shifts=shifts)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "AtomicGraph":
        """Move every tensor to ``device``; floating-point tensors also to ``dtype``."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif t.is_floating_point():
                out[f.name] = t.to(device=device, dtype=dtype or t.dtype)
            else:
                out[f.name] = t.to(device=device)
        return AtomicGraph(**out)


def edge_vectors(positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor,
                 edge_index: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Vectors r_ij = r_j - r_i + shifts @ cell[batch_i], [E, 3] Å, differentiable in positions and cell."""
    i, j = edge_index[0], edge_index[1]
    # index_select rather than positions[j]: its gradient is an index_add, where advanced indexing's
    # gradient sorts the indices first (on an H200, PaiNN at 6,912 Cu atoms spent 54 of 70 ms there).
    vec = gather_rows(positions, j) - gather_rows(positions, i)
    if shifts.numel():
        vec = vec + image_offsets(shifts, cell, None if cell.shape[0] == 1 else batch.index_select(0, i))
    return vec
