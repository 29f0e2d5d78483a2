"""Optional neighbour-list backends: vesin-torch (fast C++ lists of single structures) and
torch-cluster (non-periodic batches on CUDA). Same conventions as the cell list.
"""

from __future__ import annotations

from typing import Optional, Tuple

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


def vesin_neighbor_list(positions, cutoff: float, cell=None, pbc=None) -> Pairs:
    """:func:`neighbor_list` computed by vesin-torch (single structures only; same conventions)."""
    from vesin_torch import NeighborList

    cutoff = check_cutoff(cutoff)
    positions = as_positions(positions)
    cell_np, pbc_np = as_cells(cell, pbc, 1, positions.device)
    if pbc_np[0].any():
        lattice_frame(cell_np[0], pbc_np[0])  # same singular-cell error as ours
    box = torch.as_tensor(cell_np[0], dtype=positions.dtype, device=positions.device)
    periodic = torch.as_tensor(pbc_np[0], device=positions.device)
    i, j, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
        positions.detach(), box, periodic, quantities="ijS")
    return i.long(), j.long(), shifts.long()
