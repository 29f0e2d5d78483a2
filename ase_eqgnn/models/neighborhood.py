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

from typing import Optional

import torch

from ..indexing import gather_rows, scatter_rows

#: ``layout`` choices: "auto" (each family's fast layout) or "reference" (the plain edge list).
LAYOUTS = ("auto", "reference")


class EdgeList:
    """The reference neighbourhood: edge form is the edge list [E, ...] itself."""

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


__all__ = ["LAYOUTS", "EdgeList", "build_neighborhood"]
