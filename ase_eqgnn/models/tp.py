"""Tensor-product representation in the NequIP style, built on e3nn.

Node features are irreps ``features x (0e + 1o + 2e + ... up to l_max)``: every l with its natural
parity (-1)^l, which is what spherical harmonics of an edge direction carry. Start: x_i =
embedding(Z_i) as ``features x 0e``. Each of the ``layers`` blocks computes

    y_ij = TP_uvu( Lin_1(x)_j , Y(r̂_ij) ; w_ij ),    w_ij = R(e(r_ij) f(r_ij))     (on edges)
    a_i  = n Σ_j y_ij                                                                (to nodes)
    x_i  = Gate( Lin_2(a_i) + SI(x_i) ) + x_i          (residual when the irreps agree)

with Y the e3nn spherical harmonics up to l_max ("component" normalisation), TP the "uvu" tensor
product of e3nn's ``TensorProduct`` (per-edge weights, ``shared_weights=False``) with paths l1 ⊗ l2 -> l3
for every output irrep that keeps natural parity (so the net is O(3)-equivariant, parity included),
R an e3nn ``FullyConnectedNet`` (no biases, R(0) = 0) on the Bessel basis e times the cutoff
envelope f (so each edge's weights fade out smoothly: value, first and second derivative vanish at
the cutoff), n = 1/sqrt(avg_num_neighbors), Lin/SI e3nn ``Linear`` maps (self-interaction), and the
gate: SiLU on scalars, sigmoid gates on each l > 0 irrep. The last block produces scalars only
(``features x 0e``, then SiLU); they are the output [N, features], invariant under O(3).

With ``correlation`` ν > 1 each block works on body-ordered features instead of a_i (MACE's product
basis, :mod:`.body_order`):

    a_i  <-  Σ_{n ≤ ν} W^{(n)}_{Z_i} · U^{(n)} · Lin_A(a_i)^{⊗n}     (channel-wise symmetric powers)

where a_i then carries every irrep up to ``sh_l_max`` in every block (the last one too) and Lin_A
maps it to ``features x`` each of them; ν = 1 (the default) is the network above, unchanged.
``sh_l_max`` (default l_max) is the highest l of Y, and of the density when ν > 1: MACE's design
is l_max 1 for the features a block passes on and sh_l_max 3 for the density.

Example
-------
>>> from ase_eqgnn.models import build_model
>>> model = build_model("tp", species=["Cu"], cutoff=5.0, features=8, l_max=1, layers=2)
>>> str(model.representation.hidden_irreps)
'8x0e+8x1o'
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate

from .body_order import SymmetricContraction
from .blocks import (BesselBasis, PolynomialCutoff, SpeciesEmbedding, check_positive_float,
                     check_positive_int, edge_lengths)
from .layouts import PaddedNeighborhood
from .neighborhood import exchange_ghosts, layer_views
from .tp_fused import NeighborTensorProduct

DEFAULTS = {
    "features": 32,
    "l_max": 2,
    "layers": 4,
    "n_radial": 8,
    "radial_hidden": 64,
    "radial_layers": 2,
    "envelope_p": 6,
    "avg_num_neighbors": 16.0,
    "correlation": 1,
    "sh_l_max": None,
}


def natural_irreps(features: int, l_max: int) -> o3.Irreps:
    """``features x 0e + features x 1o + features x 2e + ...`` up to ``l_max``."""
    return o3.Irreps([(features, (l, (-1) ** l)) for l in range(l_max + 1)])


def uvu_instructions(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets: o3.Irreps
                     ) -> Tuple[o3.Irreps, List[tuple]]:
    """Output irreps and "uvu" instructions for every path l1 ⊗ l2 -> l3 with l3 in ``targets``."""
    allowed = {ir for _, ir in targets}
    out, instructions = [], []
    for i1, (mul, ir1) in enumerate(irreps_in):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir3 in ir1 * ir2:  # selection rules, parity included
                if ir3 in allowed:
                    instructions.append((i1, i2, len(out), "uvu", True))
                    out.append((mul, ir3))
    return o3.Irreps(out), instructions


class TPLayer(nn.Module):
    """One convolution block: x (irreps_in) [N, dim] -> x (irreps_out) [N, dim']."""

    def __init__(self, irreps_in: o3.Irreps, targets: o3.Irreps, irreps_sh: o3.Irreps,
                 n_radial: int, radial_hidden: int, radial_layers: int, norm: float,
                 body_order: Optional[Tuple[o3.Irreps, int, int]] = None):
        super().__init__()
        self.norm = norm
        self.irreps_in = irreps_in
        self.lin_1 = o3.Linear(irreps_in, irreps_in)
        # body_order = (density irreps, correlation, n_species): the messages summed into the
        # density A_i (all of its irreps, also in the last block), then its symmetric powers
        # contracted to the targets (models/body_order.py) before lin_2 and the gate.
        irreps_mid, instructions = uvu_instructions(
            irreps_in, irreps_sh, targets if body_order is None else body_order[0])
        self._tp_args = (irreps_in, irreps_sh, irreps_mid, instructions)
        self._reference_tps: Dict[tuple, nn.Module] = {}  # e3nn's TensorProduct per (dtype, device)
        self.fused_tp = NeighborTensorProduct(irreps_in, irreps_sh, irreps_mid, instructions)
        self.radial = FullyConnectedNet(
            [n_radial] + [radial_hidden] * radial_layers + [self.fused_tp.weight_numel],
            torch.nn.functional.silu)
        self.density = self.product = None
        if body_order is not None:
            density, correlation, n_species = body_order
            self.density = o3.Linear(irreps_mid, density)
            channels_out = o3.Irreps([(density[0].mul, ir) for _, ir in targets])
            self.product = SymmetricContraction(density, channels_out, correlation, n_species)
            irreps_mid = self.product.irreps_out
        scalars = o3.Irreps([(mul, ir) for mul, ir in targets if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in targets if ir.l > 0])
        if len(gated):
            self.gate = Gate(scalars, [torch.nn.functional.silu],
                             o3.Irreps([(gated.num_irreps, "0e")]), [torch.sigmoid], gated)
            gate_in = self.gate.irreps_in
            self.irreps_out = self.gate.irreps_out
        else:  # scalars only (the last block): a plain SiLU
            self.gate = nn.SiLU()
            gate_in = scalars
            self.irreps_out = scalars
        self.lin_2 = o3.Linear(irreps_mid, gate_in)
        self.self_interaction = o3.Linear(irreps_in, gate_in)
        self.residual = self.irreps_out == irreps_in
        # Residual on the scalar block when only scalars come out (the last block).
        self.scalar_residual = (not self.residual and irreps_in[0].ir == o3.Irrep("0e")
                                and self.irreps_out == o3.Irreps([irreps_in[0]]))

    def convolve(self, x, sh, w, nbh, cache) -> torch.Tensor:
        """Σ_j TP_uvu(x_j, Y_ij; w_ij): [N, irreps_mid.dim]. ``cache`` keeps the fused product's
        per-graph operands across blocks."""
        if isinstance(nbh, PaddedNeighborhood):
            return self.fused_tp(x, sh, w, nbh, cache)
        return nbh.sum(self.reference_tp(x.dtype, x.device)(nbh.gather(x), sh, w))

    def reference_tp(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """e3nn's ``TensorProduct`` for this block (the reference path), built at first use: building
        one costs as much as the rest of the block, and the fast path never needs it. It holds no
        weights (they come per edge from the radial net), so it is not part of the state_dict; e3nn
        builds its constants in torch's default dtype."""
        key = (dtype, device)
        if key not in self._reference_tps:
            tp = o3.TensorProduct(*self._tp_args, shared_weights=False, internal_weights=False)
            self._reference_tps[key] = tp.to(device=device, dtype=dtype)
        return self._reference_tps[key]

    def forward(self, x, sh, radial, nbh, cache, species=None):
        w = self.radial(radial)  # per-edge weights; R(0) = 0, so zero on padding
        a = self.convolve(self.lin_1(x), sh, w, nbh, cache) * self.norm
        if self.product is not None:
            a = self.product(self.density(a), species)
        out = self.gate(self.lin_2(a) + self.self_interaction(x))
        if self.residual:
            out = out + x
        elif self.scalar_residual:
            out = out + x[:, :out.shape[1]]
        return out


class TensorProductNet(nn.Module):
    """Representation: (species [N], edge_vec [E,3] Å, neighbourhood) -> scalars [N, features]."""

    # The padded layout, with shared rows where neighbour counts are uneven (.layouts).
    fast_layout = {"share_rows": True}

    def __init__(self, n_species: int, cutoff: float, features: int = 32, l_max: int = 2,
                 layers: int = 4, n_radial: int = 8, radial_hidden: int = 64, radial_layers: int = 2,
                 envelope_p: int = 6, avg_num_neighbors: float = 16.0, correlation: int = 1,
                 sh_l_max: Optional[int] = None):
        super().__init__()
        self.out_features = features
        self.hidden_irreps = natural_irreps(features, l_max)
        sh_l_max = l_max if sh_l_max is None else sh_l_max
        self.irreps_sh = o3.Irreps.spherical_harmonics(sh_l_max)
        self.embedding = SpeciesEmbedding(n_species, features)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.basis = BesselBasis(n_radial, cutoff)
        self.envelope = PolynomialCutoff(cutoff, envelope_p)
        norm = 1.0 / math.sqrt(avg_num_neighbors)
        blocks = []
        irreps = o3.Irreps([(features, "0e")])
        for k in range(layers):
            targets = self.hidden_irreps if k + 1 < layers else o3.Irreps([(features, "0e")])
            body_order = (None if correlation == 1 else
                          (natural_irreps(features, sh_l_max), correlation, n_species))
            block = TPLayer(irreps, targets, self.irreps_sh, n_radial, radial_hidden, radial_layers,
                            norm, body_order)
            blocks.append(block)
            irreps = block.irreps_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, species: torch.Tensor, edge_vec: torch.Tensor, nbh) -> torch.Tensor:
        """species [N] (indices), edge vectors r_ij [E, 3] (Å), a neighbourhood (:mod:`.neighborhood`)."""
        r = edge_lengths(edge_vec)
        per_edge = (self.sh(edge_vec), self.basis(r) * self.envelope(r).unsqueeze(-1))  # Y, e(r) f(r)
        shared: Dict[Tuple[int, int, int], torch.Tensor] = {}
        x = self.embedding(species)
        views = layer_views(nbh, len(self.blocks), per_edge)
        for k, (block, (nbh_k, (sh, radial))) in enumerate(zip(self.blocks, views)):
            if k:
                (x,) = exchange_ghosts(nbh_k, x)
            # the fused product's operands are per neighbourhood: shared unless layers differ
            x = block(x, sh, radial, nbh_k, shared if nbh_k is nbh else {}, species)
        return x


def build(n_species: int, cutoff: float, hparams: dict) -> TensorProductNet:
    """Tensor-product net from validated hyper-parameters (see :data:`DEFAULTS`)."""
    l_max = check_positive_int("l_max", hparams["l_max"], minimum=0)
    if l_max > 6:
        raise ValueError(f"hyper-parameter l_max must be between 0 and 6, got {l_max}")
    correlation = check_positive_int("correlation", hparams["correlation"])
    if correlation > 4 or (correlation > 1 and l_max > 3):
        raise ValueError(f"hyper-parameter correlation must be between 1 and 4 (and l_max <= 3 when "
                         f"it is above 1), got correlation {correlation} with l_max {l_max}")
    sh_l_max = hparams["sh_l_max"]
    if sh_l_max is not None:
        sh_l_max = check_positive_int("sh_l_max", sh_l_max, minimum=0)
        if not l_max <= sh_l_max <= (3 if correlation > 1 else 6):
            raise ValueError(f"hyper-parameter sh_l_max must be between l_max ({l_max}) and "
                             f"{3 if correlation > 1 else 6} (or null for l_max), got {sh_l_max}")
    return TensorProductNet(
        n_species, cutoff,
        features=check_positive_int("features", hparams["features"]),
        l_max=l_max,
        layers=check_positive_int("layers", hparams["layers"]),
        n_radial=check_positive_int("n_radial", hparams["n_radial"]),
        radial_hidden=check_positive_int("radial_hidden", hparams["radial_hidden"]),
        radial_layers=check_positive_int("radial_layers", hparams["radial_layers"], minimum=0),
        envelope_p=check_positive_int("envelope_p", hparams["envelope_p"], minimum=2),
        avg_num_neighbors=check_positive_float("avg_num_neighbors", hparams["avg_num_neighbors"]),
        correlation=correlation,
        sh_l_max=sh_l_max,
    )
