"""Tensor-product representation in the NequIP style, built on e3nn.

Node features are irreps ``features x (0e + 1o + 2e + ... up to l_max)``: every l with its natural
parity (-1)^l, which is what spherical harmonics of an edge direction carry. Start: x_i =
embedding(Z_i) as ``features x 0e``. Each of the ``layers`` blocks computes

    y_ij = TP_uvu( Lin_1(x)_j , Y(r̂_ij) ; w_ij ),    w_ij = R(e(r_ij) f(r_ij))     (on edges)
    a_i  = n Σ_j y_ij                                                                (to nodes)
    x_i  = Gate( Lin_2(a_i) + SI(x_i) ) + x_i          (residual when the irreps agree)

(the edge and node steps are fused: see :class:`NeighborTensorProduct`). With ``correlation`` ν > 1
the block works on body-ordered features instead of a_i (MACE's product basis, :mod:`.body_order`):

    a_i  <-  Σ_{n ≤ ν} W^{(n)}_{Z_i} · U^{(n)} · Lin_A(a_i)^{⊗n}     (channel-wise symmetric powers)

where a_i then carries every irrep up to ``sh_l_max`` in every block (the last one too) and Lin_A
maps it to ``features x`` each of them; ν = 1 (the default) is the network above, unchanged.
``sh_l_max`` (default l_max) is the highest l of Y, and of the density when ν > 1: MACE's design
is l_max 1 for the features a block passes on and sh_l_max 3 for the density.

with Y the e3nn spherical harmonics up to l_max ("component" normalisation), TP the "uvu" tensor
product of e3nn's ``TensorProduct`` (per-edge weights, ``shared_weights=False``; evaluated fused with
the neighbour sum by :class:`NeighborTensorProduct`, tested equal to e3nn's) with paths l1 ⊗ l2 -> l3
for every output irrep that keeps natural parity (so the net is O(3)-equivariant, parity included),
R an e3nn ``FullyConnectedNet`` (no biases, R(0) = 0) on the Bessel basis e times the cutoff
envelope f (so each edge's weights fade out smoothly: value, first and second derivative vanish at
the cutoff), n = 1/sqrt(avg_num_neighbors), Lin/SI e3nn ``Linear`` maps (self-interaction), and the
gate: SiLU on scalars, sigmoid gates on each l > 0 irrep. The last block produces scalars only
(``features x 0e``, then SiLU); they are the output [N, features], invariant under O(3).

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
from .blocks import (BesselBasis, Neighborhoods, PolynomialCutoff, SpeciesEmbedding,
                     check_positive_float, check_positive_int, edge_lengths, neighborhoods)

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


class NeighborTensorProduct(nn.Module):
    """a_i = Σ_j TP_uvu(x_j, Y(r̂_ij); w_ij), summed over neighbours inside batched matmuls.

    Same maths (and weight layout) as ``e3nn.o3.TensorProduct(irreps_in, irreps_sh, irreps_mid,
    instructions, shared_weights=False)`` followed by a scatter-sum over edges: for each path
    l1 ⊗ l2 -> l3 with Clebsch–Gordan tensor C (e3nn's ``wigner_3j`` times sqrt(2 l3 + 1)),

        a_i[u, k] = Σ_j Σ_a w_ij[u] x_j[u, a] G_ij[a, k],     G_ij[a, k] = Σ_b C[a, b, k] Y_ij[b].

    On the padded [R, M] neighbour layout (:class:`~.blocks.Neighborhoods`, rows shared by two atoms
    where neighbour counts are uneven) this is one batched matmul per path over (j, a), so no
    per-edge output tensor [E, dim_mid] is ever built (e3nn's kernel plus scatter is several times
    slower on CPU). Inputs: x [N, irreps_in.dim], ``sh`` [R, M, irreps_sh.dim], ``weights``
    [R, M, weight_numel] (zero in empty slots). Output [N, irreps_mid.dim] in e3nn layout.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, targets: o3.Irreps):
        super().__init__()
        self.irreps_in = irreps_in
        self.irreps_sh = irreps_sh
        self.irreps_mid, self.instructions = uvu_instructions(irreps_in, irreps_sh, targets)
        in_slices, sh_slices = irreps_in.slices(), irreps_sh.slices()
        self.paths = []  # (input block, its slice, sh slice, mul, l1, l2, l3)
        offset = 0
        for k, (i1, i2, i_out, _, _) in enumerate(self.instructions):
            mul, ir1 = irreps_in[i1]
            ir2, ir3 = irreps_sh[i2].ir, self.irreps_mid[i_out].ir
            self.paths.append((i1, in_slices[i1], sh_slices[i2], mul, ir1.l, ir2.l, ir3.l))
            # Constants, not state: kept out of the state_dict and rebuilt on every dtype/device move.
            self.register_buffer(f"cg_{k}", self._cg(k, torch.get_default_dtype(), None),
                                 persistent=False)
            offset += mul
        self.weight_numel = offset

    def _cg(self, k: int, dtype: torch.dtype, device) -> torch.Tensor:
        _, _, _, _, l1, l2, l3 = self.paths[k]
        cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)
        return cg.to(dtype=dtype, device=device)

    def _apply(self, fn, *args, **kwargs):
        # Casting float32 constants to float64 would keep float32 round-off, which breaks
        # equivariance at the 1e-8 level in float64: recompute them in the target dtype instead.
        super()._apply(fn, *args, **kwargs)
        for k in range(len(self.paths)):
            old = getattr(self, f"cg_{k}")
            setattr(self, f"cg_{k}", self._cg(k, old.dtype, old.device))
        return self

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, nbh: Neighborhoods,
                cache: Dict[Tuple[int, int, int], torch.Tensor]) -> torch.Tensor:
        n, r, m = nbh.n_nodes, nbh.n_rows, nbh.width
        gathered: Dict[int, torch.Tensor] = {}
        outs = []
        # One split (its backward is one cat), not a slice per path (a zero-filled gradient each).
        per_path = weights.split([p[3] for p in self.paths], dim=-1)
        for k, (i1, sl_in, sl_sh, mul, l1, l2, l3) in enumerate(self.paths):
            a_dim, k_dim = 2 * l1 + 1, 2 * l3 + 1
            if i1 not in gathered:  # neighbours' features, [R, M, 2l1+1, mul]
                block = x[:, sl_in].reshape(n, mul, a_dim).transpose(1, 2).reshape(n, a_dim * mul)
                gathered[i1] = nbh.gather(block).view(r, m, a_dim, mul)
            key = (l1, l2, l3)
            if key not in cache:  # G_ij = C · Y_ij, shared by all blocks: [R, M, 2l1+1, 2l3+1]
                cache[key] = nbh.outer_operand(
                    torch.einsum("nmb,abk->nmak", sh[:, :, sl_sh], getattr(self, f"cg_{k}")))
            z = gathered[i1] * per_path[k].unsqueeze(2)  # [R, M, 2l1+1, mul]
            out = nbh.sum_outer(cache[key], z)  # Σ_j,a G_ij,ak z_ij,a: [N, 2l3+1, mul]
            outs.append(out.transpose(1, 2).reshape(n, mul * k_dim))
        return torch.cat(outs, dim=1) if outs else x.new_zeros(n, 0)


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
        self.tp = NeighborTensorProduct(irreps_in, irreps_sh, targets if body_order is None
                                        else body_order[0])
        irreps_mid = self.tp.irreps_mid
        self.density = self.product = None
        if body_order is not None:
            density, correlation, n_species = body_order
            self.density = o3.Linear(irreps_mid, density)
            channels = density[0].mul
            self.product = SymmetricContraction(density, o3.Irreps([(channels, ir) for _, ir in targets]),
                                                correlation, n_species)
            irreps_mid = self.product.irreps_out
        self.radial = FullyConnectedNet(
            [n_radial] + [radial_hidden] * radial_layers + [self.tp.weight_numel],
            torch.nn.functional.silu)
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

    def forward(self, x, sh, radial, nbh: Neighborhoods, cache, species=None):
        w = self.radial(radial)  # [R, M, weight_numel]; R(0) = 0: zero in empty slots
        a = self.tp(self.lin_1(x), sh, w, nbh, cache) * self.norm
        if self.product is not None:
            a = self.product(self.density(a), species)
        out = self.gate(self.lin_2(a) + self.self_interaction(x))
        if self.residual:
            out = out + x
        elif self.scalar_residual:
            out = out + x[:, :out.shape[1]]
        return out


class TensorProductNet(nn.Module):
    """Representation: (species [N], edge_index [2,E], edge_vec [E,3] Å) -> scalars [N, features]."""

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

    def layout(self, edge_index: torch.Tensor, n_nodes: int) -> Neighborhoods:
        """The neighbour layout :meth:`forward` works on (built outside it: it reads sizes back)."""
        return neighborhoods(edge_index, n_nodes, share_rows=True)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor,
                layout: Optional[Neighborhoods] = None) -> torch.Tensor:
        r = edge_lengths(edge_vec)
        nbh = self.layout(edge_index, species.shape[0]) if layout is None else layout
        sh = nbh.pad(self.sh(edge_vec))  # [R, M, dim_sh]
        # e(r) f(r): [R, M, n_radial], zero in empty slots
        radial = nbh.pad(self.basis(r) * self.envelope(r).unsqueeze(-1))
        cache: Dict[Tuple[int, int, int], torch.Tensor] = {}
        x = self.embedding(species)
        for block in self.blocks:
            x = block(x, sh, radial, nbh, cache, species)
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
