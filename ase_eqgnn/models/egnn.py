"""EGNN representation (Satorras, Hoogeboom, Welling, ICML 2021).

Node features h_i [F] start as embedding(Z_i). Each of the ``layers`` blocks computes

    m_ij = φ_e(h_i, h_j, e(r_ij) f(r_ij)) f(r_ij)               edge messages [E, F]
    h_i  = h_i + φ_h(h_i, n Σ_j m_ij)                           node update (residual)

where e is the Bessel basis (the distance encoding that replaces the paper's raw |r_ij|²), f the
cutoff envelope (multiplying the message makes it vanish smoothly at the cutoff) and
n = 1/sqrt(avg_num_neighbors). There are no extra edge attributes a_ij: the species enter through
h_i, h_j. φ_e, φ_h are two-layer SiLU MLPs.

With ``coord_update=True`` each block also moves a copy of the coordinates, E(n)-equivariantly:

    x_i = x_i + n Σ_j (x_i - x_j) φ_x(m_ij) f(r_ij)

kept as a displacement d_i so that periodic edges stay valid (r_ij <- r_ij + d_j - d_i); the
envelope still uses the original distances, so the edge set and smoothness are unchanged.

Only invariants (distances) enter, so the output h [N, F] is invariant under rotations,
reflections, translations and permutations.

Example
-------
>>> from ase_eqgnn.models import build_model
>>> model = build_model("egnn", species=["H", "O"], cutoff=4.0, features=32, layers=2)
>>> sorted(model.config["hparams"])[:3]
['avg_num_neighbors', 'coord_update', 'envelope_p']
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..indexing import gather_rows, scatter_rows
from .blocks import (BesselBasis, MLP, PolynomialCutoff, SpeciesEmbedding, check_positive_float,
                     check_positive_int, edge_lengths)

DEFAULTS = {
    "features": 128,
    "layers": 3,
    "n_radial": 8,
    "envelope_p": 6,
    "avg_num_neighbors": 16.0,
    "coord_update": False,
}


class EGNNLayer(nn.Module):
    """One EGNN block: (h [N,F], radial [E,R], envelope [E]) -> h [N,F] (and coordinate moves)."""

    def __init__(self, features: int, n_radial: int, norm: float, coord_update: bool):
        super().__init__()
        self.features = features
        self.norm = norm
        # φ_e's first linear acts on [h_i, h_j, radial]; split so h_i, h_j are transformed per node
        # (N rows) and only gathered afterwards, instead of a matmul over E concatenated rows.
        self.edge_src = nn.Linear(features, features, bias=True)
        self.edge_dst = nn.Linear(features, features, bias=False)
        self.edge_rad = nn.Linear(n_radial, features, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(features, features), nn.SiLU())
        self.phi_h = MLP([2 * features, features, features])
        self.phi_x = MLP([features, features, 1]) if coord_update else None

    def forward(self, h, radial, env, i, j):
        hi = gather_rows(self.edge_src(h), i)
        hj = gather_rows(self.edge_dst(h), j)
        m = self.edge_out(hi + hj + self.edge_rad(radial)) * env.unsqueeze(-1)  # [E, F]
        agg = scatter_rows(m, i, h.shape[0]) * self.norm
        return h + self.phi_h(torch.cat([h, agg], dim=-1)), m

    def coordinate_shift(self, m, env, vec, i, n_nodes: int):
        """n Σ_j (x_i - x_j) φ_x(m_ij) f(r_ij) = -n Σ_j r_ij φ_x(m_ij) f(r_ij): [N, 3] Å."""
        w = self.phi_x(m) * env.unsqueeze(-1)  # [E, 1]; the envelope keeps it smooth at the cutoff
        return -scatter_rows(vec * w, i, n_nodes) * self.norm


class EGNN(nn.Module):
    """EGNN representation: (species [N], edge_index [2,E], edge_vec [E,3] Å) -> h [N, features]."""

    def __init__(self, n_species: int, cutoff: float, features: int = 128, layers: int = 3,
                 n_radial: int = 8, envelope_p: int = 6, avg_num_neighbors: float = 16.0,
                 coord_update: bool = False):
        super().__init__()
        self.out_features = features
        self.coord_update = coord_update
        self.embedding = SpeciesEmbedding(n_species, features)
        self.basis = BesselBasis(n_radial, cutoff)
        self.envelope = PolynomialCutoff(cutoff, envelope_p)
        norm = 1.0 / math.sqrt(avg_num_neighbors)
        # The last block's coordinates would never be read: give it no φ_x (no unused parameters).
        self.layers = nn.ModuleList(EGNNLayer(features, n_radial, norm, coord_update and k + 1 < layers)
                                    for k in range(layers))

    def layout(self, edge_index: torch.Tensor, n_nodes: int) -> None:
        """EGNN works on the edge list itself (scatter sums): no neighbour layout."""
        return None

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor,
                layout: None = None) -> torch.Tensor:
        i, j = edge_index[0], edge_index[1]
        r0 = edge_lengths(edge_vec)
        env = self.envelope(r0)
        radial = self.basis(r0) * env.unsqueeze(-1)
        h = self.embedding(species)
        vec = edge_vec
        for k, layer in enumerate(self.layers):
            h, m = layer(h, radial, env, i, j)
            if self.coord_update and k + 1 < len(self.layers):
                d = layer.coordinate_shift(m, env, vec, i, h.shape[0])
                vec = vec + gather_rows(d, j) - gather_rows(d, i)
                radial = self.basis(edge_lengths(vec)) * env.unsqueeze(-1)
        return h


def build(n_species: int, cutoff: float, hparams: dict) -> EGNN:
    """EGNN from validated hyper-parameters (see :data:`DEFAULTS`)."""
    coord_update = hparams["coord_update"]
    if not isinstance(coord_update, bool):
        raise ValueError(f"hyper-parameter coord_update must be true or false, got {coord_update!r}")
    return EGNN(
        n_species, cutoff,
        features=check_positive_int("features", hparams["features"]),
        layers=check_positive_int("layers", hparams["layers"]),
        n_radial=check_positive_int("n_radial", hparams["n_radial"]),
        envelope_p=check_positive_int("envelope_p", hparams["envelope_p"], minimum=2),
        avg_num_neighbors=check_positive_float("avg_num_neighbors", hparams["avg_num_neighbors"]),
        coord_update=coord_update,
    )
