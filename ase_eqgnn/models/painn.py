"""PaiNN representation (Schütt, Unke, Gastegger, ICML 2021).

Each atom carries scalars s_i [F] and vectors v_i [3, F] (v = 0 at the start, s = embedding(Z)).
With r̂_ij the unit edge vector, e(r) the Bessel basis and f(r) the cutoff envelope, each of the
``layers`` blocks applies

message:   (a, b, c)_ij = φ(s_j) ∘ W(r_ij),   φ = Linear-SiLU-Linear: F -> 3F,  W = A (e(r) f(r)): 3F
           (the first block, where v = 0, has no b: φ and W give 2F)
           s_i += n Σ_j a_ij
           v_i += n Σ_j (b_ij ∘ v_j + c_ij ∘ r̂_ij)
update:    (U v_i, V v_i) = linear maps over channels (no bias, so they commute with rotations)
           (a_vv, a_sv, a_ss) = Linear-SiLU-Linear( [s_i, ||V v_i||] ): 2F -> 3F
           v_i += a_vv ∘ U v_i
           s_i += a_sv ∘ <U v_i, V v_i> + a_ss

with n = 1/sqrt(avg_num_neighbors). The output is s [N, F], invariant under rotations, reflections
and translations.

The blocks are written against the neighbourhood interface of :mod:`.neighborhood` (``gather``,
``sum``, ``sum_outer``): with the reference :class:`~.neighborhood.EdgeList` they are SchNetPack's
``x[idx_j]`` and scatter-adds; the fast padded layouts of :mod:`.layouts` compute the same numbers.
Where SchNetPack's filter is (A e(r) + b) f(r), ours has no bias b (so W vanishes at the cutoff, and on
padding, with the envelope folded into the basis); φ's outputs come from one linear, U and V from one.

Example
-------
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", species=[1, 6, 8], cutoff=5.0, features=32, layers=2, n_radial=8)
>>> model.config["hparams"]["features"]
32
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import (MLP, BesselBasis, PolynomialCutoff, SpeciesEmbedding, check_positive_float,
                     check_positive_int, edge_lengths)
from .neighborhood import exchange_ghosts, layer_views

DEFAULTS = {
    "features": 128,
    "layers": 3,
    "n_radial": 20,
    "envelope_p": 6,
    "avg_num_neighbors": 16.0,
}


class PaiNNMessage(nn.Module):
    """Message block: s [N,F], v [N,3,F], radial e(r) f(r) and unit vectors r̂ in edge form."""

    def __init__(self, features: int, n_radial: int, norm: float, first: bool = False):
        super().__init__()
        self.features = features
        self.norm = norm
        self.first = first
        # The first block sees v = 0, so it needs no b (the b ∘ v_j term): 2F outputs, not 3F.
        n_out = (2 if first else 3) * features
        self.phi = MLP([features, features, n_out])
        # No bias: W(r) = A (e(r) f(r)) vanishes with the envelope (and on padding).
        self.filter = nn.Linear(n_radial, n_out, bias=False)

    def forward(self, s, v, radial, unit, nbh):
        F = self.features
        x = nbh.gather_product(self.phi(s), self.filter(radial))  # φ(s_j) ∘ W(r_ij)
        if self.first:
            a, c = x.split(F, dim=-1)
        else:
            a, b, c = x.split(F, dim=-1)
        ds = nbh.sum(a)  # Σ_j a_ij
        dv = nbh.sum_outer(unit, c)  # Σ_j r̂_ij ⊗ c_ij: [N, 3, F]
        if not self.first:
            dv = dv + nbh.sum(nbh.gather_product(v, b.unsqueeze(-2)))  # Σ_j b_ij ∘ v_j
        return s + self.norm * ds, v + self.norm * dv


class PaiNNUpdate(nn.Module):
    """Update block: mixes scalars and vectors within each atom."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.UV = nn.Linear(features, 2 * features, bias=False)
        self.mix = MLP([2 * features, features, 3 * features])

    def forward(self, s, v):
        F = self.features
        Uv, Vv = self.UV(v).split(F, dim=-1)  # [N, 3, F] each
        # eps keeps the gradient finite at ||Vv|| = 0 (isolated atoms, first block).
        norm_Vv = torch.sqrt(Vv.square().sum(dim=1) + 1e-8)
        a_vv, a_sv, a_ss = self.mix(torch.cat([s, norm_Vv], dim=-1)).split(F, dim=-1)
        s = s + a_sv * (Uv * Vv).sum(dim=1) + a_ss
        v = v + a_vv.unsqueeze(1) * Uv
        return s, v


class PaiNN(nn.Module):
    """PaiNN representation: (species [N], edge_vec [E,3] Å, neighbourhood) -> s [N, features]."""

    # The padded layout with shared rows and the N x N layout for small molecules (.layouts).
    fast_layout = {"share_rows": True, "dense": True}

    def __init__(self, n_species: int, cutoff: float, features: int = 128, layers: int = 3,
                 n_radial: int = 20, envelope_p: int = 6, avg_num_neighbors: float = 16.0):
        super().__init__()
        self.features = features
        self.out_features = features
        self.n_layers = layers
        self.embedding = SpeciesEmbedding(n_species, features)
        self.basis = BesselBasis(n_radial, cutoff)
        self.envelope = PolynomialCutoff(cutoff, envelope_p)
        norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.messages = nn.ModuleList(PaiNNMessage(features, n_radial, norm, first=k == 0)
                                      for k in range(layers))
        self.updates = nn.ModuleList(PaiNNUpdate(features) for _ in range(layers))

    def forward(self, species: torch.Tensor, edge_vec: torch.Tensor, nbh) -> torch.Tensor:
        """species [N] (indices), edge vectors r_ij [E, 3] (Å), a neighbourhood (:mod:`.neighborhood`)."""
        r = edge_lengths(edge_vec)
        per_edge = (edge_vec / r.unsqueeze(-1), self.basis(r) * self.envelope(r).unsqueeze(-1))
        s = self.embedding(species)
        v = s.new_zeros(s.shape[0], 3, self.features)
        for k, (nbh_k, (unit, radial)) in enumerate(layer_views(nbh, self.n_layers, per_edge)):
            if k:
                s, v = exchange_ghosts(nbh_k, s, v)
            s, v = self.messages[k](s, v, radial, unit, nbh_k)
            s, v = self.updates[k](s, v)
        return s


def build(n_species: int, cutoff: float, hparams: dict) -> PaiNN:
    """PaiNN from validated hyper-parameters (see :data:`DEFAULTS`)."""
    return PaiNN(
        n_species, cutoff,
        features=check_positive_int("features", hparams["features"]),
        layers=check_positive_int("layers", hparams["layers"]),
        n_radial=check_positive_int("n_radial", hparams["n_radial"]),
        envelope_p=check_positive_int("envelope_p", hparams["envelope_p"], minimum=2),
        avg_num_neighbors=check_positive_float("avg_num_neighbors", hparams["avg_num_neighbors"]),
    )
