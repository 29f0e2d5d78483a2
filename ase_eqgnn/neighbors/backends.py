"""Optional neighbour-list backends: vesin-torch (fast C++ lists of single structures) and
torch-cluster (non-periodic batches on CUDA). Same conventions as the cell list.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from .frame import lattice_frame
from .inputs import as_cells, as_positions, check_cutoff

Pairs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def cluster_available() -> bool:
    """Whether the optional ``torch-cluster`` package (``pip install "ase_eqgnn[cluster]"``) imports."""
    try:
        import torch_cluster  # noqa: F401
    except ImportError:
        return False
    return True


def cluster_neighbor_list(positions: torch.Tensor, cutoff: float,
                          batch: Optional[torch.Tensor] = None) -> Pairs:
    """Non-periodic neighbour list of a batch of structures by torch-cluster's ``radius_graph``.

    ``radius_graph`` silently drops neighbours beyond ``max_num_neighbors`` (32 by default); it is
    called with the size of the largest structure, so nothing can be dropped, and the result is
    checked against that bound. Shifts are all zero. Same conventions as :func:`batched_neighbor_list`.
    """
    from torch_cluster import radius_graph

    cutoff = check_cutoff(cutoff)
    positions = as_positions(positions)
    n_atoms = positions.shape[0]
    if batch is None:
        batch = torch.zeros(n_atoms, dtype=torch.long, device=positions.device)
    largest = int(torch.bincount(batch).max()) if n_atoms else 0
    if largest < 2:
        empty = torch.zeros(0, dtype=torch.long, device=positions.device)
        return empty, empty, torch.zeros(0, 3, dtype=torch.long, device=positions.device)
    edges = radius_graph(positions.detach(), r=cutoff, batch=batch, loop=False,
                         max_num_neighbors=largest, flow="source_to_target")
    j, i = edges[0], edges[1]  # flow source_to_target: edges[1] is the centre atom
    if int(torch.bincount(i, minlength=n_atoms).max()) >= largest:
        raise RuntimeError("torch-cluster returned a truncated neighbour list")
    # radius_graph compares r <= cutoff; keep the strict convention of the other backends
    keep = (positions[j] - positions[i]).detach().square().sum(-1) < cutoff * cutoff
    i, j = i[keep], j[keep]
    return i, j, torch.zeros(i.shape[0], 3, dtype=torch.long, device=positions.device)


def vesin_available() -> bool:
    """Whether the optional ``vesin-torch`` package (a fast C++ neighbour list) can be imported."""
    try:
        import vesin_torch  # noqa: F401
    except ImportError:
        return False
    return True


# vesin-torch 0.6 sizes its cell grid from the extent of the atoms (non-periodic directions) or the
# cell (periodic ones), one cell per cutoff, and caps the grid at 1e5 cells by rescaling the three
# counts. For an elongated grid the rescaled count of a thin direction truncates to zero, and the
# next integer division by it kills the process with SIGFPE: one atom 1e6 Å from a cluster, a slab
# 1e4 Å wide. vesin is only handed grids that stay below the cap (half of it, for margin); the cell
# list handles the rest.
_VESIN_SAFE_GRID_CELLS = 50_000
# Nor cells so thin that each atom meets thousands of images of the cell (a 0.01 Å cell: vesin
# grows its list until the allocation fails); the cell list refuses those with a clear error.
_VESIN_MAX_IMAGES = 5_000


def vesin_grid_fits(positions: torch.Tensor, cutoff: float, cell: np.ndarray, pbc: np.ndarray) -> bool:
    """Whether vesin-torch's cell grid for this structure stays below its cell cap, and the cell
    is not so thin that atoms meet thousands of lattice images (see above).

    ``positions`` [N, 3] (N > 0), ``cell`` [3, 3] and ``pbc`` [3] (numpy) of one structure."""
    frame = lattice_frame(cell, pbc)
    volume = abs(np.linalg.det(frame))
    lo, hi = torch.aminmax(positions.detach(), dim=0)
    extent = (hi - lo).to(torch.float64).cpu().numpy()
    cells = images = 1.0
    for d in range(3):
        if pbc[d]:
            length = volume / np.linalg.norm(np.cross(frame[(d + 1) % 3], frame[(d + 2) % 3]))
            images *= 2 * math.ceil(cutoff / length) + 1
        else:
            length = 1.02 * max(float(extent[d]), 1.0)  # vesin pads the extent by 1 %
        cells *= max(1.0, math.floor(length / cutoff))
    return cells <= _VESIN_SAFE_GRID_CELLS and images <= _VESIN_MAX_IMAGES


def vesin_neighbor_list(positions, cutoff: float, cell=None, pbc=None) -> Pairs:
    """:func:`~ase_eqgnn.neighbors.neighbor_list` computed by vesin-torch (single structures only;
    same conventions).

    Structures that vesin-torch cannot take safely go to the torch cell list instead: no atoms
    (vesin raises), or a cell grid past vesin's cap (:func:`vesin_grid_fits`; vesin would crash the
    process).
    """
    from vesin_torch import NeighborList

    from .cell_list import neighbor_list

    cutoff = check_cutoff(cutoff)
    positions = as_positions(positions)
    cell_np, pbc_np = as_cells(cell, pbc, 1, positions.device)
    if pbc_np[0].any():
        lattice_frame(cell_np[0], pbc_np[0])  # same singular-cell error as ours
    if positions.shape[0] == 0 or not vesin_grid_fits(positions, cutoff, cell_np[0], pbc_np[0]):
        return neighbor_list(positions, cutoff, cell_np[0], pbc_np[0])
    box = torch.as_tensor(cell_np[0], dtype=positions.dtype, device=positions.device)
    periodic = torch.as_tensor(pbc_np[0], device=positions.device)
    i, j, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
        positions.detach(), box, periodic, quantities="ijS")
    return i.long(), j.long(), shifts.long()
