"""Back-mapping quality metrics with CGVAE's definitions (Wang et al., ICML 2022), so numbers compare.

Notation: generated positions ``x`` and reference ``x*`` [n_atoms, 3] in Å, atoms of one molecule.

- RMSD without alignment (CGVAE aligns nothing: the CG frame fixes the pose)::

      RMSD = sqrt( (1/n) sum_a |x_a - x*_a|^2 )       (all atoms, or heavy atoms only)

- Bond graph inferred from distances: ``A_ij = 1`` iff ``i != j`` and
  ``d_ij < 1.3 (r_i + r_j)`` with covalent radii r(H) = 0.23, r(C, N, O) = 0.68, r(S) = 1.02 Å
  (CGVAE's table; a few more elements are included from the same table).
- Graph-edit ratio, as CGVAE coded it (signed, so missing and extra bonds can cancel)::

      GED = | sum_ij (A*_ij - A_ij) | / sum_ij A*_ij

  and the symmetric version ``sum_ij |A*_ij - A_ij| / sum_ij A*_ij`` (every wrong pair counts).
  Both are computed per sample and averaged; "heavy" versions use the heavy-atom subgraph.
- Valid ratio: fraction of samples whose bond graph equals the reference graph exactly
  (all atoms, or heavy atoms only as CGVAE's headline "valid" number).
- Steric clash ratio (our definition, CGVAE has none in code): fraction of samples with at least one
  pair of heavy atoms that are more than 3 bonds apart in the topology (or not connected) and
  closer than 2.0 Å.
- Diversity for K samples ``x^(1..K)`` of one frame::

      div = mean_{k<l} RMSD(x^k, x^l) / mean_k RMSD(x^k, x*)

  averaged over frames (0 = all samples identical; ~1 = the samples spread as far from each other
  as from the reference).

The reference graph is the one inferred from the reference coordinates (as CGVAE), or the
topology's bonds when no reference exists (:func:`adjacency_from_bonds`).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["COVALENT_RADII", "covalent_radii", "bond_graph", "adjacency_from_bonds", "rmsd",
           "graph_edit_ratio", "graph_edit_ratio_symmetric", "graph_valid", "topological_distances",
           "clash_mask", "has_clash", "diversity", "evaluate_backmapping"]

# CGVAE's COVCUTOFFTABLE (Å) for the elements of organic and bio-molecules
COVALENT_RADII: Dict[str, float] = {"H": 0.23, "B": 0.83, "C": 0.68, "N": 0.68, "O": 0.68, "F": 0.64,
                                    "P": 0.75, "S": 1.02, "Cl": 0.99, "Br": 1.21, "I": 1.40,
                                    "Na": 0.97, "Mg": 1.10, "K": 1.33, "Ca": 0.99, "Zn": 1.45}
BOND_SCALE = 1.3
CLASH_DISTANCE = 2.0
CLASH_MIN_BONDS = 4  # pairs more than 3 bonds apart


def covalent_radii(elements: Sequence[str]) -> np.ndarray:
    """Radii (Å) for element symbols; ValueError on an element not in the table."""
    try:
        return np.array([COVALENT_RADII[e] for e in elements])
    except KeyError as exc:
        raise ValueError(f"no covalent radius for element {exc.args[0]!r}") from None


def _pair_distances(xyz: np.ndarray) -> np.ndarray:
    d = xyz[..., :, None, :] - xyz[..., None, :, :]
    return np.sqrt((d * d).sum(-1))


def bond_graph(xyz: np.ndarray, elements: Sequence[str], scale: float = BOND_SCALE) -> np.ndarray:
    """Adjacency [..., n, n] (bool, zero diagonal): ``d_ij < scale (r_i + r_j)``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    r = covalent_radii(elements)
    adj = _pair_distances(xyz) < scale * (r[:, None] + r[None, :])
    idx = np.arange(xyz.shape[-2])
    adj[..., idx, idx] = False
    return adj


def adjacency_from_bonds(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """Adjacency [n, n] (bool) from a bond list [n_bonds, 2]."""
    adj = np.zeros((n_atoms, n_atoms), dtype=bool)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    adj[bonds[:, 0], bonds[:, 1]] = adj[bonds[:, 1], bonds[:, 0]] = True
    return adj


def rmsd(xyz: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Unaligned RMSD [...] (Å) between [..., n, 3] arrays, over the atoms where ``mask``."""
    d2 = ((np.asarray(xyz, np.float64) - np.asarray(ref, np.float64)) ** 2).sum(-1)
    if mask is not None:
        d2 = d2[..., np.asarray(mask, bool)]
    return np.sqrt(d2.mean(-1))


def graph_edit_ratio(adj: np.ndarray, ref_adj: np.ndarray) -> np.ndarray:
    """CGVAE's ``|sum(A_ref - A)| / sum(A_ref)`` per sample [...]."""
    a, r = adj.astype(np.int64), np.broadcast_to(ref_adj, adj.shape).astype(np.int64)
    return np.abs((r - a).sum((-1, -2))) / r.sum((-1, -2))


def graph_edit_ratio_symmetric(adj: np.ndarray, ref_adj: np.ndarray) -> np.ndarray:
    """``sum|A_ref - A| / sum(A_ref)`` per sample [...]: every missing or extra bond counts."""
    a, r = adj.astype(np.int64), np.broadcast_to(ref_adj, adj.shape).astype(np.int64)
    return np.abs(r - a).sum((-1, -2)) / r.sum((-1, -2))


def graph_valid(adj: np.ndarray, ref_adj: np.ndarray) -> np.ndarray:
    """True [...] where the bond graph equals the reference exactly."""
    return np.all(adj == ref_adj, axis=(-1, -2))


def topological_distances(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """Bond-count distances [n, n] (``inf`` when not connected), breadth-first on the bond list."""
    adj = adjacency_from_bonds(n_atoms, bonds)
    dist = np.full((n_atoms, n_atoms), np.inf)
    np.fill_diagonal(dist, 0)
    frontier = np.eye(n_atoms, dtype=bool)
    reached = frontier.copy()
    step = 0
    while frontier.any():
        step += 1
        frontier = (frontier.astype(np.int64) @ adj.astype(np.int64) > 0) & ~reached
        dist[frontier] = step
        reached |= frontier
    return dist


def clash_mask(elements: Sequence[str], bonds: np.ndarray, min_bonds: int = CLASH_MIN_BONDS
               ) -> np.ndarray:
    """Pairs [n, n] (bool, i<j) checked for clashes: both heavy, >= ``min_bonds`` bonds apart."""
    heavy = np.array([e != "H" for e in elements])
    topo = topological_distances(len(elements), bonds)
    return np.triu(heavy[:, None] & heavy[None, :] & (topo >= min_bonds), k=1)


def has_clash(xyz: np.ndarray, pair_mask: np.ndarray, threshold: float = CLASH_DISTANCE
              ) -> np.ndarray:
    """True [...] where any masked pair is closer than ``threshold`` Å."""
    i, j = np.nonzero(pair_mask)
    xyz = np.asarray(xyz, np.float64)
    d = np.linalg.norm(xyz[..., i, :] - xyz[..., j, :], axis=-1)
    return np.any(d < threshold, axis=-1) if len(i) else np.zeros(xyz.shape[:-2], bool)


def diversity(samples: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean over frames of mean pairwise RMSD among K samples / mean RMSD to the reference.

    ``samples`` [F, K, n, 3], ``ref`` [F, n, 3]; needs K >= 2."""
    samples = np.asarray(samples, np.float64)
    k = samples.shape[1]
    if k < 2:
        raise ValueError("diversity needs at least 2 samples per frame")
    iu, ju = np.triu_indices(k, 1)
    pair = rmsd(samples[:, iu], samples[:, ju], mask).mean(-1)
    to_ref = rmsd(samples, ref[:, None], mask).mean(-1)
    return float(np.mean(pair / np.maximum(to_ref, 1e-12)))


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def evaluate_backmapping(samples: np.ndarray, ref: np.ndarray, elements: Sequence[str],
                         bonds: np.ndarray, ref_graph: str = "reference", chunk: int = 256
                         ) -> Dict[str, float]:
    """All metrics for generated structures ``samples`` [F, K, n, 3] against ``ref`` [F, n, 3].

    ``ref_graph``: ``"reference"`` (graph inferred from each reference frame, CGVAE) or
    ``"topology"`` (the topology's ``bonds``). RMSDs are averaged over all F*K samples (CGVAE
    averages over the valid ones only; ``*_rmsd_valid`` report that too). Returns a flat dict."""
    samples = np.asarray(samples, np.float64)
    ref = np.asarray(ref, np.float64)
    if samples.ndim == 3:
        samples = samples[:, None]
    f, k, n, _ = samples.shape
    if ref.shape != (f, n, 3) or len(elements) != n:
        raise ValueError(f"shapes disagree: samples {samples.shape}, ref {ref.shape}, "
                         f"{len(elements)} elements")
    heavy = np.array([e != "H" for e in elements])
    pairs = clash_mask(elements, bonds)
    topo_adj = adjacency_from_bonds(n, bonds)
    rows = {key: [] for key in ("rmsd", "heavy_rmsd", "ged", "ged_sym", "valid", "heavy_ged",
                                "heavy_ged_sym", "heavy_valid", "clash")}
    for sl in _chunks(f, max(1, chunk // k)):
        gen = samples[sl]
        adj = bond_graph(gen, elements)
        ref_adj = bond_graph(ref[sl], elements)[:, None] if ref_graph == "reference" else topo_adj
        ref_heavy = ref_adj[..., heavy, :][..., heavy]
        adj_heavy = adj[..., heavy, :][..., heavy]
        rows["rmsd"].append(rmsd(gen, ref[sl, None]))
        rows["heavy_rmsd"].append(rmsd(gen, ref[sl, None], heavy))
        rows["ged"].append(graph_edit_ratio(adj, ref_adj))
        rows["ged_sym"].append(graph_edit_ratio_symmetric(adj, ref_adj))
        rows["valid"].append(graph_valid(adj, ref_adj))
        rows["heavy_ged"].append(graph_edit_ratio(adj_heavy, ref_heavy))
        rows["heavy_ged_sym"].append(graph_edit_ratio_symmetric(adj_heavy, ref_heavy))
        rows["heavy_valid"].append(graph_valid(adj_heavy, ref_heavy))
        rows["clash"].append(has_clash(gen, pairs))
    arr = {key: np.concatenate([np.asarray(v).reshape(-1) for v in val]) for key, val in rows.items()}
    out = {"frames": float(f), "samples_per_frame": float(k),
           "rmsd": float(arr["rmsd"].mean()), "heavy_rmsd": float(arr["heavy_rmsd"].mean()),
           "graph_edit_ratio": float(arr["ged"].mean()),
           "graph_edit_ratio_sym": float(arr["ged_sym"].mean()),
           "heavy_graph_edit_ratio": float(arr["heavy_ged"].mean()),
           "heavy_graph_edit_ratio_sym": float(arr["heavy_ged_sym"].mean()),
           "valid_ratio": float(arr["valid"].mean()),
           "heavy_valid_ratio": float(arr["heavy_valid"].mean()),
           "clash_ratio": float(arr["clash"].mean())}
    v, hv = arr["valid"], arr["heavy_valid"]
    out["rmsd_valid"] = float(arr["rmsd"][v].mean()) if v.any() else float("nan")
    out["heavy_rmsd_valid"] = float(arr["heavy_rmsd"][hv].mean()) if hv.any() else float("nan")
    if k >= 2:
        out["diversity"] = diversity(samples, ref)
        out["heavy_diversity"] = diversity(samples, ref, heavy)
    return out
