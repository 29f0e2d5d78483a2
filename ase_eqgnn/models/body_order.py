"""Body-ordered equivariant features: MACE's symmetric contraction of the neighbour density.

An atom's neighbour density A_i is a sum of two-body messages over its neighbours j; here it has K
channels, each carrying the same irreps ``irreps_channel`` (for example 0e + 1o + 2e: d = 9
components A_{i,k,a}). Channel by channel, the symmetric tensor powers of A_i up to the order ν
(``correlation``) are contracted to each output irrep L with learnable per-species weights:

    B_{i,k,LM} = Σ_{n=1}^{ν} Σ_η W^{(n,L)}_{z_i,η,k} Σ_{a_1..a_n} U^{(n,L)}_{η,M,a_1..a_n} A_{i,k,a_1} ... A_{i,k,a_n}

U^{(n,L)}_η (η = 1 .. paths) is a basis of the O(3)-equivariant linear maps from the n-th symmetric
power of ``irreps_channel`` to L (generalised Clebsch–Gordan coefficients, :func:`symmetric_power_basis`):
the blocks are coupled one at a time with e3nn's ``wigner_3j`` through every intermediate irrep (both
parities), each coupling is symmetrised over its n input slots, and Gram–Schmidt in a fixed order
makes the set orthonormal (Frobenius norm² 2L+1 each, e3nn's "component" normalisation); the
fixed order makes the basis, and so the meaning of stored weights, the same on every machine.
Because A_i sums over neighbours, its n-th power sums over n neighbours at once: B_i is an
(n+1)-body function of the neighbourhood (the ACE basis, Drautz 2019; MACE, Batatia et al. 2022).
ν = 1 is a per-species, per-channel linear map of A_i, i.e. two-body messages.

Evaluation follows Horner's rule, as MACE does: with T^{(n)} = Σ_η W^{(n)}_{z_i} U^{(n)} (weights
summed into the basis first),

    B = (((T^{(ν)} · A + T^{(ν-1)}) · A + ...) + T^{(1)}) · A

where "· A" contracts the last input slot; this is exact because every U^{(n)} is symmetric in its
slots. The first contraction, per species, is one batched matrix product over channels.

Example
-------
>>> import torch
>>> from e3nn import o3
>>> layer = SymmetricContraction(o3.Irreps("4x0e+4x1o"), o3.Irreps("4x0e+4x1o"), correlation=3,
...                              n_species=2)
>>> density = layer.irreps_in.randn(5, -1)            # 5 atoms
>>> species = torch.tensor([0, 1, 1, 0, 1])
>>> layer(density, species).shape
torch.Size([5, 16])
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from e3nn import o3

__all__ = ["symmetric_power_basis", "SymmetricContraction"]


def _blocks(irreps: o3.Irreps) -> List[Tuple[o3.Irrep, slice]]:
    """Every irrep copy of ``irreps`` with its slice of components."""
    out, start = [], 0
    for mul, ir in irreps:
        for _ in range(mul):
            out.append((ir, slice(start, start + ir.dim)))
            start += ir.dim
    return out


def symmetric_power_basis(irreps: o3.Irreps, order: int, ir_out: o3.Irrep) -> torch.Tensor:
    """Orthonormal equivariant maps Sym^order(irreps) -> ir_out: float64 [paths, 2L+1, d, ..., d].

    Each map U_η is symmetric in its ``order`` input slots, satisfies
    ``D_L(g) U_η(x, ..., x) = U_η(D(g) x, ..., D(g) x)`` for every g in O(3), and
    ``Σ U_η U_η' = (2L+1) δ_ηη'``. Returns shape [0, 2L+1, d, ...] when no such map exists.
    """
    irreps, ir_out = o3.Irreps(irreps), o3.Irrep(ir_out)
    d = irreps.dim
    blocks = _blocks(irreps)
    eye = torch.eye(d, dtype=torch.float64)
    raw: List[torch.Tensor] = []  # couplings [2L+1, d**order], in a fixed order
    # Sorted block tuples suffice: symmetrising the couplings of a permuted tuple spans the same maps.
    for combo in itertools.combinations_with_replacement(range(len(blocks)), order):
        ir0, sl0 = blocks[combo[0]]
        partial = [(ir0, eye[sl0])]  # (intermediate irrep, coupling [2λ+1, d**k])
        for b in combo[1:]:
            ir_b, sl_b = blocks[b]
            grown = []
            for ir_left, t in partial:
                for ir_mid in ir_left * ir_b:
                    c = o3.wigner_3j(ir_left.l, ir_b.l, ir_mid.l, dtype=torch.float64)
                    t_new = torch.einsum("ux,umw,mc->wxc", t, c, eye[sl_b])
                    grown.append((ir_mid, t_new.reshape(ir_mid.dim, -1)))
            partial = grown
        raw += [t for ir, t in partial if ir == ir_out]
    basis: List[torch.Tensor] = []
    for t in raw:
        t = t.reshape((ir_out.dim,) + (d,) * order)
        perms = list(itertools.permutations(range(1, order + 1)))
        v = sum(t.permute(0, *p) for p in perms).flatten() / len(perms)
        norm = t.norm()  # of the coupling before symmetrising: an antisymmetric one vanishes
        for _ in range(2):  # Gram–Schmidt, twice for round-off
            for q in basis:
                v = v - (q @ v) * q
        if v.norm() > 1e-8 * norm:
            basis.append(v / v.norm())
    shape = (len(basis), ir_out.dim) + (d,) * order
    if not basis:
        return torch.zeros(shape, dtype=torch.float64)
    return (torch.stack(basis) * math.sqrt(ir_out.dim)).reshape(shape)


class SymmetricContraction(nn.Module):
    """B_i = Σ_{n ≤ ν} W^{(n)}_{z_i} · U^{(n)} · A_i^{⊗n}, channel-wise (see the module docstring).

    Parameters
    ----------
    irreps_in : the density's irreps, ``K x ir_1 + K x ir_2 + ...`` (the same K for every irrep;
        e3nn layout: block by block, channel-major within a block).
    irreps_out : ``K x L_1 + K x L_2 + ...`` (same K), each L reachable from the input.
    correlation : ν >= 1, the highest power of A_i.
    n_species : number of species; ``forward`` takes species indices in [0, n_species).

    ``forward(density [N, irreps_in.dim], species [N]) -> [N, irreps_out.dim]``.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, n_species: int):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        muls = {mul for mul, _ in self.irreps_in} | {mul for mul, _ in self.irreps_out}
        if len(muls) != 1:
            raise ValueError(f"SymmetricContraction needs one multiplicity for every irrep, got "
                             f"{self.irreps_in} -> {self.irreps_out}")
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        self.channels = muls.pop()
        self.correlation = int(correlation)
        self.n_species = int(n_species)
        self.irreps_channel = o3.Irreps([(1, ir) for _, ir in self.irreps_in])
        d = self.irreps_channel.dim
        self.weights = nn.ParameterDict()
        # order -> [(weight key or None when no path exists, 2L+1)], one entry per output irrep
        self._paths: Dict[int, List[Tuple[Optional[str], int]]] = {}
        for order in range(1, self.correlation + 1):
            self._paths[order] = []
            for j, (_, ir) in enumerate(self.irreps_out):
                u = symmetric_power_basis(self.irreps_channel, order, ir)
                key = f"order{order}_out{j}" if len(u) else None
                self._paths[order].append((key, ir.dim))
                if key is None:
                    continue
                # The exact float64 constants as int64 bits: module.to(dtype) leaves integer
                # buffers alone, so a float32 model moved to float64 still has full-precision
                # coefficients (equivariance at float64 round-off); cast per call in forward.
                self.register_buffer(f"basis_{key}", u.reshape(len(u), -1).view(torch.int64),
                                     persistent=False)
                self.weights[key] = nn.Parameter(
                    torch.randn(self.n_species, len(u), self.channels) / math.sqrt(len(u)))
        for j, (_, ir) in enumerate(self.irreps_out):
            if all(self._paths[n][j][0] is None for n in self._paths):
                raise ValueError(f"output irrep {ir} cannot be formed from {self.irreps_channel} "
                                 f"with correlation {self.correlation}")
        self._d = d

    def _summed(self, order: int, dtype: torch.dtype) -> torch.Tensor:
        """T^{(order)} = Σ_η W_{z,η,k} U_η: [Z, K, D_out * d**order], rows ordered (L, M, a...)."""
        parts = []
        for key, dim in self._paths[order]:
            if key is None:  # no equivariant map of this order to this irrep
                parts.append(self._zeros(dim * self._d ** order, dtype))
                continue
            u = getattr(self, f"basis_{key}").view(torch.float64).to(dtype)  # [paths, (2L+1) d^n]
            parts.append(torch.einsum("zpk,px->zkx", self.weights[key], u))
        return torch.cat(parts, dim=-1)

    def _zeros(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        device = next(iter(self.weights.values())).device
        return torch.zeros(self.n_species, self.channels, width, dtype=dtype, device=device)

    def forward(self, density: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n, k, d = density.shape[0], self.channels, self._d
        # e3nn layout -> channel-major [K, N, d]
        x = torch.cat([density[:, sl].reshape(n, k, ir.dim) for sl, (_, ir)
                       in zip(self.irreps_in.slices(), self.irreps_in)], dim=-1).transpose(0, 1)
        dtype = density.dtype
        z = self.n_species
        # Highest order: Σ_{z,c} onehot[n,z] x[n,k,c] T[z,k,X,c], one bmm over the channels.
        top = self._summed(self.correlation, dtype).view(z, k, -1, d)
        onehot = nn.functional.one_hot(species, z).to(dtype)  # [N, Z]
        xz = (onehot.unsqueeze(0).unsqueeze(-1) * x.unsqueeze(2)).reshape(k, n, z * d)
        out = torch.bmm(xz, top.permute(1, 0, 3, 2).reshape(k, z * d, -1))  # [K, N, X]
        for order in range(self.correlation - 1, 0, -1):
            out = out + self._summed(order, dtype).index_select(0, species).transpose(0, 1)
            out = (out.view(k, n, -1, d) * x.unsqueeze(2)).sum(-1)
        # [K, N, D_out] -> e3nn layout
        pieces, start = [], 0
        for _, dim in self._paths[1]:
            pieces.append(out[:, :, start:start + dim].permute(1, 0, 2).reshape(n, k * dim))
            start += dim
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlation}, "
                f"n_species={self.n_species}")
