"""The tensor product fused with the neighbour sum: the speed-up of the ``tp`` family's convolution.

:class:`NeighborTensorProduct` computes what the reference path of :class:`~.tp.TPLayer` computes
with e3nn's ``TensorProduct`` on every edge followed by a scatter-sum,

    a_i = Σ_j TP_uvu(x_j, Y_ij; w_ij),

for the "uvu" paths l1 ⊗ l2 -> l3 of e3nn (same weight layout). With C the Clebsch–Gordan tensor of a
path (e3nn's ``wigner_3j`` times sqrt(2 l3 + 1)):

    a_i[u, k] = Σ_j Σ_a w_ij[u] x_j[u, a] G_ij[a, k],     G_ij[a, k] = Σ_b C[a, b, k] Y_ij[b].

On a padded neighbourhood (:mod:`.layouts`) the sum over (j, a) is one batched matmul per path
(:meth:`~.layouts.PaddedNeighborhood.sum_outer_prepared`), so the per-edge output [E, dim_mid] is never
built, and G_ij is formed once per graph and shared by all blocks (``cache``). Tested equal to e3nn's
``TensorProduct`` plus a scatter-sum (``tests/test_layouts.py``).

The Clebsch–Gordan constants are kept exact in every dtype: they are computed in float64 and stored as
the bits of those float64 numbers in int64 buffers, which ``model.float()`` / ``model.double()``
leave alone (a float32 copy cast back to float64 would break equivariance at the 1e-8 level).

Example
-------
>>> import torch
>>> from e3nn import o3
>>> from ase_eqgnn.models.layouts import PaddedNeighborhood
>>> from ase_eqgnn.models.tp import natural_irreps, uvu_instructions
>>> irreps, sh = natural_irreps(2, 1), o3.Irreps.spherical_harmonics(1)
>>> mid, instructions = uvu_instructions(irreps, sh, irreps)
>>> fused = NeighborTensorProduct(irreps, sh, mid, instructions)
>>> nbh = PaddedNeighborhood(torch.tensor([[0, 1], [1, 0]]), 2)
>>> x, y = irreps.randn(2, -1), sh.randn(2, -1)
>>> fused(x, nbh.edges(y), nbh.edges(torch.randn(2, fused.weight_numel)), nbh, {}).shape
torch.Size([2, 16])
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from e3nn import o3

from .layouts import PaddedNeighborhood


class NeighborTensorProduct(nn.Module):
    """a_i = Σ_j TP_uvu(x_j, Y_ij; w_ij) on a padded neighbourhood (see the module docstring).

    Inputs: x [N, irreps_in.dim], ``sh`` [R, M, irreps_sh.dim] and ``weights`` [R, M, weight_numel]
    in the neighbourhood's edge form (zero on padding). Output [N, irreps_mid.dim] in e3nn layout.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_mid: o3.Irreps,
                 instructions: List[tuple]):
        super().__init__()
        self.irreps_in, self.irreps_sh, self.irreps_mid = irreps_in, irreps_sh, irreps_mid
        in_slices, sh_slices = irreps_in.slices(), irreps_sh.slices()
        self.paths = []  # (input block, its slice, sh slice, mul, l1, l2, l3)
        for k, (i1, i2, i_out, mode, _) in enumerate(instructions):
            if mode != "uvu":
                raise ValueError(f"only 'uvu' paths are fused, got {mode!r}")
            mul, ir1 = irreps_in[i1]
            l2, l3 = irreps_sh[i2].ir.l, irreps_mid[i_out].ir.l
            self.paths.append((i1, in_slices[i1], sh_slices[i2], mul, ir1.l, l2, l3))
            cg = o3.wigner_3j(ir1.l, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)
            # float64 bits in an int64 buffer: dtype casts of the module leave them exact
            self.register_buffer(f"cg_{k}", cg.contiguous().view(torch.int64), persistent=False)
        self.weight_numel = sum(p[3] for p in self.paths)

    def clebsch_gordan(self, k: int, dtype: torch.dtype) -> torch.Tensor:
        """C of path ``k`` [2l1+1, 2l2+1, 2l3+1] in ``dtype`` (rounded once, from float64)."""
        return getattr(self, f"cg_{k}").view(torch.float64).to(dtype)

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor,
                nbh: PaddedNeighborhood,
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
                cg = self.clebsch_gordan(k, sh.dtype)
                cache[key] = nbh.outer_operand(torch.einsum("nmb,abk->nmak", sh[:, :, sl_sh], cg))
            z = gathered[i1] * per_path[k].unsqueeze(2)  # [R, M, 2l1+1, mul]
            out = nbh.sum_outer_prepared(cache[key], z)  # Σ_j,a G_ij,ak z_ij,a: [N, 2l3+1, mul]
            outs.append(out.transpose(1, 2).reshape(n, mul * k_dim))
        return torch.cat(outs, dim=1) if outs else x.new_zeros(n, 0)


__all__ = ["NeighborTensorProduct"]
