"""The training domain of a potential: the shortest distance seen for each pair of elements.

A model trained on structures whose closest H-O pair was 0.9 Å knows nothing about an H-O pair at
0.5 Å: its energy there is an extrapolation, usually far too low (two Cu atoms 0.5 Å apart: +0.65 eV
from a model, 337 eV from EMT, the potential it was trained on). Trained checkpoints therefore
record, per element pair, the shortest distance in their training data, and a structure with a pair
closer than ``fraction`` times that distance is flagged.

The record is a dict ``{"H-O": 0.93, "O-O": 2.41, ...}`` (Å): element symbols ordered by atomic
number, joined by "-". Pairs never seen within the cutoff have no entry and are not checked.

Example
-------
>>> from ase.build import bulk
>>> from ase_eqgnn.graph import AtomicGraph
>>> g = AtomicGraph.from_atoms(bulk("Cu", "fcc", a=3.6)).with_neighbors(3.0)
>>> record = shortest_distances([g])
>>> round(record["Cu-Cu"], 3)
2.546
>>> closest_violation(g, {"Cu-Cu": 3.6}, fraction=0.75)[:2]
(0, 0)
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import torch
from ase.data import chemical_symbols

from .graph import AtomicGraph, edge_vectors

#: A structure is out of the domain when a pair is closer than this fraction of the shortest
#: distance of that element pair in the training data.
DEFAULT_FRACTION = 0.75


def pair_key(z1: int, z2: int) -> str:
    """``"H-O"`` for (1, 8) or (8, 1): symbols ordered by atomic number."""
    a, b = sorted((int(z1), int(z2)))
    return f"{chemical_symbols[a]}-{chemical_symbols[b]}"


def _pair_minima(graph: AtomicGraph) -> Dict[Tuple[int, int], Tuple[float, int]]:
    """{(z_lo, z_hi): (shortest distance, edge index)} over the graph's edges."""
    if graph.edge_index is None:
        raise ValueError("the graph has no neighbour list: call graph.with_neighbors(cutoff) first")
    if graph.num_edges == 0:
        return {}
    i, j = graph.edge_index
    d = edge_vectors(graph.positions.detach().double(), graph.cell.double(), graph.batch,
                     graph.edge_index, graph.shifts).norm(dim=1)
    zi, zj = graph.numbers[i], graph.numbers[j]
    lo, hi = torch.minimum(zi, zj), torch.maximum(zi, zj)
    code = lo * 1000 + hi
    out = {}
    for c in torch.unique(code).tolist():
        mask = (code == c).nonzero().squeeze(1)
        k = mask[torch.argmin(d[mask])]
        out[(c // 1000, c % 1000)] = (float(d[k]), int(k))
    return out


def shortest_distances(graphs: Iterable[AtomicGraph]) -> Dict[str, float]:
    """The shortest distance (Å) of each element pair over ``graphs`` (each with its neighbour
    list built), as a record for a checkpoint (see the module docstring)."""
    best: Dict[Tuple[int, int], float] = {}
    for g in graphs:
        for pair, (d, _) in _pair_minima(g).items():
            best[pair] = min(d, best.get(pair, math.inf))
    return {pair_key(*pair): round(d, 6) for pair, d in sorted(best.items())}


def closest_violation(graph: AtomicGraph, record: Dict[str, float],
                      fraction: float = DEFAULT_FRACTION) -> Optional[Tuple[int, int, float, float]]:
    """The pair furthest below ``fraction`` x its recorded shortest distance, as
    ``(i, j, distance, recorded)``, or None when every pair is within the domain."""
    worst, worst_ratio = None, fraction
    i, j = (graph.edge_index if graph.num_edges else (None, None))
    for (z1, z2), (d, k) in _pair_minima(graph).items():
        ref = record.get(pair_key(z1, z2))
        if ref is None or ref <= 0:
            continue
        if d / ref < worst_ratio:
            worst, worst_ratio = (int(i[k]), int(j[k]), d, float(ref)), d / ref
    return worst


__all__ = ["DEFAULT_FRACTION", "pair_key", "shortest_distances", "closest_violation"]
