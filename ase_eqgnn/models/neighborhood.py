"""How a model sees its neighbours: one small interface, its plain reference, and the factory.

Every model family is written against the operations below. ``edge form`` is however a neighbourhood
stores one value per edge (i, j): the reference keeps the edge list itself, [E, ...]; the fast layouts
of :mod:`.layouts` keep padded rows per atom, [R, M, ...].

========================  ============================================  =================================
operation                 maths                                         shapes
========================  ============================================  =================================
``edges(t)``              t_ij, a per-edge tensor, in edge form         [E, ...] -> edge form
``gather(x)``             x_j, the neighbour's value on each edge       [N, ...] -> edge form
``centre(x)``             x_i, the centre atom's value on each edge     [N, ...] -> edge form
``gather_product(x, w)``  x_j ∘ w_ij                                    [N, ...], edge form -> edge form
``sum(m)``                Σ_j m_ij                                      edge form -> [N, ...]
``sum_outer(u, m)``       Σ_j Σ_a u_ij,a ⊗ m_ij,a  (no axis a: Σ_j u ⊗ m)  u [.., (A,) D], m [.., (A,) F]
                                                                        -> [N, D, F]
========================  ============================================  =================================

A neighbourhood may also span atoms that another process owns (LAMMPS's ghost atoms, whose features
that process computes): then its ``halo`` (None otherwise) refreshes their rows between layers, and
a family calls :func:`exchange_ghosts` before every layer but the first (:mod:`ase_eqgnn.lammps.halo`).

Values from ``gather``/``centre`` may be broadcast views (the dense layout): combine them with edge
tensors by broadcasting, as the models do. Per-edge quantities that must vanish on padding (radial
weights) go through ``edges`` after they are computed on the real edges.

:class:`EdgeList` is the reference: gathers are ``index_select`` and sums are scatter-adds over the
centre atom — SchNetPack's ``x[idx_j]`` and ``scatter_add``. :func:`build_neighborhood` picks it, or the
fast layout a family asks for (``fast_layout`` on the representation; see :mod:`.layouts`), which
computes the same numbers (tested equal in energies, forces, stress and parameter gradients).

Example
-------
>>> import torch
>>> edge_index = torch.tensor([[0, 0, 1], [1, 2, 0]])       # edges 0->1, 0->2, 1->0 of 3 atoms
>>> nbh = EdgeList(edge_index, 3)
>>> x = torch.tensor([[1.0], [10.0], [100.0]])
>>> nbh.sum(nbh.gather(x)).flatten().tolist()             # Σ_j x_j per atom
[110.0, 1.0, 0.0]
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..indexing import gather_rows, scatter_rows

#: ``layout`` choices: "auto" (each family's fast layout) or "reference" (the plain edge list).
LAYOUTS = ("auto", "reference")


class EdgeList:
    """The reference neighbourhood: edge form is the edge list [E, ...] itself."""

    #: the exchange that gives ghost atoms their owners' features (None: every atom is evaluated here)
    halo = None

    def __init__(self, edge_index: torch.Tensor, n_nodes: int):
        self.i = edge_index[0]
        self.j = edge_index[1]
        # N as the shape of an empty tensor, not an int: torch.compile then treats it as dynamic.
        self._nodes = edge_index.new_empty((n_nodes, 0))

    @property
    def n_nodes(self) -> int:
        return self._nodes.shape[0]

    def edges(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return gather_rows(x, self.j)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        return gather_rows(x, self.i)

    def gather_product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.gather(x) * w

    def sum(self, m: torch.Tensor) -> torch.Tensor:
        return scatter_rows(m, self.i, self.n_nodes)

    def sum_outer(self, u: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if u.dim() == 2:  # no extra axis a
            return self.sum(u.unsqueeze(-1) * m.unsqueeze(-2))
        return self.sum(torch.einsum("ead,eaf->edf", u, m))


class Layered:
    """Per-layer neighbourhoods for when only some atoms' energies are wanted.

    In an L-layer network the features of atom i after layer k (0-based) depend on atoms at most
    k + 1 pairs away. So if only the energies of atoms within ``wanted_hops`` pairs of some sources are
    wanted (LAMMPS's local atoms: 0; the ``fix external`` runner: L), layer k only has to update the
    atoms within ``wanted_hops + L - 1 - k`` pairs, and only the pairs (i, j) into them are summed:

        layer k sums over  {(i, j) : hop(i) <= wanted_hops + L - 1 - k}

    The features (and energies) of the other atoms come out wrong and must not be read. Layer 0 takes
    every pair given, so pass only pairs whose centre is within ``wanted_hops + L - 1`` hops.

    A family reads it through :func:`layer_views`; a family that does not still gets exact wanted
    energies, because every attribute falls through to layer 0's neighbourhood (all the pairs).
    """

    #: A layer whose pairs are more than this fraction of the previous layer's reuses its
    #: neighbourhood (measured: building a padded layout costs about what summing 20 % fewer pairs
    #: saves; benchmarks/mliap_layers.py).
    REUSE_ABOVE = 0.75

    def __init__(self, edge_index: torch.Tensor, n_nodes: int, hop: torch.Tensor, wanted_hops: int,
                 n_layers: int, layout: str = "auto", fast_layout: Optional[dict] = None):
        centre_hop = hop.index_select(0, edge_index[0])
        self.parts = [(build_neighborhood(edge_index, n_nodes, layout, fast_layout), None)]
        kept = edge_index.shape[1]
        for k in range(1, n_layers):
            ids = (centre_hop <= wanted_hops + n_layers - 1 - k).nonzero().squeeze(1)
            if ids.numel() > self.REUSE_ABOVE * kept:
                # too few pairs dropped to pay for laying out another neighbourhood: keep the
                # previous layer's (its extra pairs only update atoms nothing reads)
                self.parts.append(self.parts[-1])
                continue
            sub = build_neighborhood(edge_index.index_select(1, ids), n_nodes, layout, fast_layout)
            self.parts.append((sub, ids))
            kept = ids.numel()

    def layer(self, k: int):
        """(neighbourhood of layer k, ids of its pairs among all pairs; None: all of them)."""
        return self.parts[k]

    def __getattr__(self, name):
        if name == "parts":  # (not yet set: during unpickling or copying)
            raise AttributeError(name)
        return getattr(self.parts[0][0], name)


def layer_views(nbh, n_layers: int, per_edge: Tuple[torch.Tensor, ...]) -> List[tuple]:
    """``[(neighbourhood_k, per_edge_k)]`` for layers k = 0..n_layers-1: the neighbourhood layer k sums
    over and the per-edge tensors [E, ...] of ``per_edge`` in its edge form (``edges``).

    A plain neighbourhood gives itself and one conversion for every layer; a :class:`Layered` one
    gives each layer its own pairs.
    """
    if not isinstance(nbh, Layered):
        converted = tuple(nbh.edges(t) for t in per_edge)
        return [(nbh, converted)] * n_layers
    views = []
    for k in range(n_layers):
        sub, ids = nbh.layer(k)
        picked = per_edge if ids is None else tuple(t.index_select(0, ids) for t in per_edge)
        views.append((sub, tuple(sub.edges(t) for t in picked)))
    return views


def exchange_ghosts(nbh, *features: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``features`` (each [N, ...]) with the rows of atoms another process owns set to that
    process's values (the neighbourhood's ``halo``); unchanged when there is none, as in one process.
    """
    halo = nbh.halo
    return features if halo is None else halo.exchange(*features)


def build_neighborhood(edge_index: torch.Tensor, n_nodes: int, layout: str = "auto",
                       fast_layout: Optional[dict] = None):
    """The neighbourhood of ``n_nodes`` atoms with edges ``edge_index`` [2, E].

    ``layout``: "reference" gives :class:`EdgeList`; "auto" gives the padded layout built with the
    options ``fast_layout`` (a family's choice, e.g. ``{"share_rows": True}``), or the edge list when
    the family has none. Building a padded layout reads sizes back from the device: do it outside
    compiled or captured code (:meth:`~.potential.Potential.forward` does).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "reference" or fast_layout is None or edge_index.shape[1] == 0:
        return EdgeList(edge_index, n_nodes)  # (without edges there is nothing to lay out)
    from .layouts import neighborhoods

    return neighborhoods(edge_index, n_nodes, **fast_layout)


__all__ = ["LAYOUTS", "EdgeList", "Layered", "build_neighborhood", "exchange_ghosts", "layer_views"]
