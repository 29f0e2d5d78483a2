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

from .blocks import (BesselBasis, MLP, PolynomialCutoff, SpeciesEmbedding, check_positive_float,
                     check_positive_int, edge_lengths)
from .neighborhood import exchange_ghosts, layer_views

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

    def forward(self, h, radial, env, nbh):
        # φ_e(h_i, h_j, radial): its first linear applied per atom, then gathered (N rows, not E)
        pre = nbh.centre(self.edge_src(h)) + nbh.gather(self.edge_dst(h)) + self.edge_rad(radial)
        m = self.edge_out(pre) * env.unsqueeze(-1)  # m_ij, zero beyond the cutoff
        return h + self.phi_h(torch.cat([h, nbh.sum(m) * self.norm], dim=-1)), m

    def coordinate_shift(self, m, env, vec, nbh):
        """n Σ_j (x_i - x_j) φ_x(m_ij) f(r_ij) = -n Σ_j r_ij φ_x(m_ij) f(r_ij): [N, 3] Å."""
        w = self.phi_x(m) * env.unsqueeze(-1)  # the envelope keeps it smooth at the cutoff
        return -nbh.sum(vec * w) * self.norm


class EGNN(nn.Module):
    """EGNN representation: (species [N], edge_vec [E,3] Å, neighbourhood) -> h [N, features]."""

    # Messages depend on both ends of an edge: the plain edge list is also the fastest layout.
    fast_layout = None

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

    def forward(self, species: torch.Tensor, edge_vec: torch.Tensor, nbh) -> torch.Tensor:
        """species [N] (indices), edge vectors r_ij [E, 3] (Å), a neighbourhood (:mod:`.neighborhood`)."""
        r0 = edge_lengths(edge_vec)
        per_edge = (self.envelope(r0), self.basis(r0)) + ((edge_vec,) if self.coord_update else ())
        h = self.embedding(species)
        shift = None  # Σ of the coordinate shifts of the blocks so far, [N, 3] Å
        for k, (nbh_k, tensors) in enumerate(layer_views(nbh, len(self.layers), per_edge)):
            env, radial = tensors[0], tensors[1] * tensors[0].unsqueeze(-1)
            if k and self.coord_update:  # (shifts are differences: a periodic image's is its atom's)
                h, shift = exchange_ghosts(nbh_k, h, shift)
            elif k:
                (h,) = exchange_ghosts(nbh_k, h)
            if self.coord_update:
                vec = tensors[2]
                if shift is not None:  # edge vectors between the shifted coordinates
                    vec = vec + nbh_k.gather(shift) - nbh_k.centre(shift)
                    radial = self.basis(edge_lengths(vec)) * env.unsqueeze(-1)
            h, m = self.layers[k](h, radial, env, nbh_k)
            if self.coord_update and k + 1 < len(self.layers):
                d = self.layers[k].coordinate_shift(m, env, vec, nbh_k)
                shift = d if shift is None else shift + d
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
