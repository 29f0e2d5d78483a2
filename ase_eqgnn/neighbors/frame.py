"""The lattice frame of a cell, and moving atoms near the origin without changing any pair vector.

The frame's rows are the lattice vectors along periodic directions and an orthonormal completion
along the others. Coordinates in it (``f = r @ inv(frame)``) wrap into [0, 1) along periodic
directions and measure plain distance along the others; the cell list bins in it.

A float32 model loses precision with the size of the coordinates, not of the distances: a system
1e6 Å from the origin has positions resolved to 0.06 Å. Two moves leave every pair vector
``r_j - r_i + S @ cell`` of the physics unchanged and bring the coordinates down to the size of the
system: :func:`wrap_counts` (an atom moves by whole lattice vectors along periodic directions; the
neighbour list's shifts absorb it) and :func:`centring_translations` (every connected piece of the
structure, which no pair links to the rest, moves as a whole along the non-periodic directions).

>>> import torch
>>> pos = torch.tensor([[1e6 + 0.5, 0.0, 0.0], [1e6 + 1.5, 0.0, 0.0]], dtype=torch.float64)
>>> centring_translations(pos, torch.tensor([[0, 1], [1, 0]]), np.zeros((1, 3, 3)),
...                       np.zeros((1, 3), dtype=bool)).tolist()[0]
[1000001.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

def lattice_frame(cell: np.ndarray, pbc: np.ndarray, graph: int = 0) -> np.ndarray:
    """Rows: lattice vectors along periodic directions, an orthonormal completion elsewhere.

    Raises ``ValueError`` when the periodic lattice vectors are (nearly) linearly dependent.
    """
    periodic = [d for d in range(3) if pbc[d]]
    vecs = cell[periodic]
    if len(periodic):
        # Gram determinant = squared volume of the periodic sub-lattice.
        gram = np.linalg.det(vecs @ vecs.T)
        scale = np.prod(np.sum(vecs**2, axis=1))
        if not gram > 1e-20 * max(scale, 1e-300) or scale == 0.0:
            names = "".join("xyz"[d] for d in periodic)
            raise ValueError(
                f"cell of structure {graph} is singular along its periodic directions ({names}): "
                f"lattice vectors {vecs.tolist()} span no volume; give a proper cell or set pbc=False "
                "along the degenerate direction")
    frame = np.zeros((3, 3))
    frame[periodic] = vecs
    free = [d for d in range(3) if not pbc[d]]
    if len(free) == 3:
        frame = np.eye(3)
    elif len(free) == 2:
        a = vecs[0] / np.linalg.norm(vecs[0])
        helper = np.eye(3)[np.argmin(np.abs(a))]
        u = np.cross(a, helper)
        u /= np.linalg.norm(u)
        frame[free[0]] = u
        frame[free[1]] = np.cross(a, u)
    elif len(free) == 1:
        n = np.cross(vecs[0], vecs[1])
        frame[free[0]] = n / np.linalg.norm(n)
    return frame


def lattice_frames(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """:func:`lattice_frame` of each structure: cells [B, 3, 3], pbc [B, 3] -> frames [B, 3, 3]."""
    return np.stack([lattice_frame(cell[b], pbc[b], b) for b in range(cell.shape[0])])


def _frame_coordinates(positions: torch.Tensor, frames: np.ndarray,
                       batch: Optional[torch.Tensor]) -> torch.Tensor:
    """``positions[n] @ inv(frames[batch[n]])`` in float64, [N, 3]."""
    inv = torch.as_tensor(np.linalg.inv(frames), dtype=torch.float64, device=positions.device)
    pos = positions.detach().to(torch.float64)
    if inv.shape[0] == 1:
        return pos @ inv[0]
    return torch.einsum("nk,nkl->nl", pos, inv.index_select(0, batch))


def wrap_counts(positions: torch.Tensor, cell: np.ndarray, pbc: np.ndarray,
                batch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Whole lattice vectors ``w`` [N, 3] (int64) such that ``positions - w @ cell[batch]`` lies
    inside the cell along periodic directions (fractional coordinates in [0, 1)); zero elsewhere.

    ``cell`` [B, 3, 3] and ``pbc`` [B, 3] are numpy arrays; ``batch`` [N] (None: one structure).
    A pair's shift ``S`` for the wrapped positions is ``S + w[j] - w[i]``.
    """
    if not pbc.any() or positions.shape[0] == 0:
        return torch.zeros(positions.shape[0], 3, dtype=torch.long, device=positions.device)
    frac = _frame_coordinates(positions, lattice_frames(cell, pbc), batch)
    periodic = torch.as_tensor(pbc, device=positions.device)
    periodic = periodic[0].expand_as(frac) if periodic.shape[0] == 1 else periodic[batch]
    return torch.where(periodic, torch.floor(frac), torch.zeros_like(frac)).long()


def centring_translations(positions: torch.Tensor, edge_index: torch.Tensor, cell: np.ndarray,
                          pbc: np.ndarray, batch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-atom translations ``t`` [N, 3] (float64) that centre each connected piece of the structure
    on the origin along its non-periodic directions.

    Pieces are the connected components of the pairs ``edge_index`` [2, E]: atoms that no pair
    links are at least the list's cutoff apart, so each piece may move on its own without changing
    any pair vector. The centre is the midpoint of the piece's extent along each non-periodic
    direction of the lattice frame; periodic directions are left alone (see :func:`wrap_counts`).
    ``positions - t`` is the centred structure.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = positions.shape[0]
    device = positions.device
    if n == 0 or pbc.all():
        return torch.zeros(n, 3, dtype=torch.float64, device=device)
    frames = lattice_frames(cell, pbc)
    frac = _frame_coordinates(positions, frames, batch)
    ij = edge_index.detach().cpu().numpy()
    graph = coo_matrix((np.ones(ij.shape[1], dtype=np.int8), (ij[0], ij[1])), shape=(n, n))
    n_pieces, label = connected_components(graph, directed=False)
    label = torch.as_tensor(label, dtype=torch.long, device=device)
    index = label[:, None].expand(-1, 3)
    big = torch.finfo(torch.float64).max
    lo = torch.full((n_pieces, 3), big, dtype=torch.float64, device=device).scatter_reduce(
        0, index, frac, "amin")
    hi = torch.full((n_pieces, 3), -big, dtype=torch.float64, device=device).scatter_reduce(
        0, index, frac, "amax")
    centre = 0.5 * (lo + hi)
    periodic = torch.as_tensor(pbc, device=device)
    atom_periodic = periodic[0].expand(n, 3) if periodic.shape[0] == 1 else periodic[batch]
    shift = torch.where(atom_periodic, torch.zeros_like(frac), centre.index_select(0, label))
    frames_t = torch.as_tensor(frames, dtype=torch.float64, device=device)
    if frames_t.shape[0] == 1:
        return shift @ frames_t[0]
    return torch.einsum("nk,nkl->nl", shift, frames_t.index_select(0, batch))
