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

Evaluation: every unordered product A_{a_1} ... A_{a_n} (a_1 <= ... <= a_n) is formed once per
channel (d + d(d+1)/2 + ... monomials instead of d + d² + ...); the basis is symmetric, so each
monomial carries U times its number of orderings. The weights are summed into the basis first,
T_{k,z} = Σ_η W_{z,η,k} U_η (no atom axis: cheap), and one batched product over the monomials per
channel gives every species' B, of which each atom keeps its own: a factor n_species of redundant
work in exchange for static shapes (no per-species gather with a device sync, so it compiles and
captures).

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

import contextlib
import functools
import itertools
import math
from typing import List, Tuple

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
    # Cached: every block of a network asks for the same bases, and the largest allowed one
    # (0e+1o+2e+3o to the 4th power) takes seconds to build. A constant, computed for real on the
    # CPU even while the model-file check builds the network with its allocations on the meta
    # device (a torch-function mode), so that check sees this family's shapes too.
    with _DISABLE_TORCH_FUNCTION():
        return _symmetric_power_basis(str(o3.Irreps(irreps)), int(order),
                                      str(o3.Irrep(ir_out))).clone()


_DISABLE_TORCH_FUNCTION = getattr(torch._C, "DisableTorchFunction", contextlib.nullcontext)


@functools.lru_cache(maxsize=64)
def _symmetric_power_basis(irreps: str, order: int, ir_out: str) -> torch.Tensor:
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


def _contraction_constants(irreps_channel: o3.Irreps, irreps_out: List[o3.Irrep], correlation: int):
    """SymmetricContraction's constants: per output irrep its (order, paths) pairs, the monomial
    tree {"first": [m1], "parent_n": [mn], "last_n": [mn]} and the basis [monomials, columns]."""
    d = irreps_channel.dim
    # Monomials: each unordered product A_a1 ... A_an (a1 <= ... <= an) once, n <= ν.
    monomials = [list(itertools.combinations_with_replacement(range(d), n))
                 for n in range(1, correlation + 1)]
    rows = [0]
    for tuples in monomials:
        rows.append(rows[-1] + len(tuples))
    # One matrix [monomials, columns]: column (L, n, η, M) holds U^{(n,L)}_{η,M} on the degree-n
    # monomials, each times its number of orderings (U is symmetric in its slots).
    columns: List[torch.Tensor] = [torch.zeros(rows[-1], 0, dtype=torch.float64)]
    outputs: List[List[Tuple[int, int]]] = []
    for ir in irreps_out:
        orders = []
        for order in range(1, correlation + 1):
            u = symmetric_power_basis(irreps_channel, order, ir)
            if len(u) == 0:
                continue
            tuples = monomials[order - 1]
            index = torch.tensor(tuples).T  # [order, monomials]
            sym = u[(slice(None), slice(None)) + tuple(index)]  # [paths, 2L+1, monomials]
            counts = torch.tensor([math.factorial(order) / math.prod(
                math.factorial(t.count(a)) for a in set(t)) for t in tuples], dtype=torch.float64)
            block = torch.zeros(rows[-1], len(u) * ir.dim, dtype=torch.float64)
            block[rows[order - 1]:rows[order]] = (sym * counts).flatten(0, 1).T
            columns.append(block)
            orders.append((order, len(u)))
        if not orders:
            raise ValueError(f"output irrep {ir} cannot be formed from {irreps_channel} "
                             f"with correlation {correlation}")
        outputs.append(orders)
    basis = torch.cat(columns, dim=1)
    # Most monomials meet no path (parity and triangle rules: for l <= 3 -> scalars, 94 of 968):
    # keep those with a coefficient, and the lower-degree ones they are built from, each
    # monomial being (its first n-1 factors' monomial) x A_an.
    used = basis.abs().amax(dim=1) > 0
    kept: List[List[Tuple[int, ...]]] = [[] for _ in monomials]
    needed: set = set()
    for n in range(correlation, 0, -1):
        kept[n - 1] = [t for i, t in enumerate(monomials[n - 1]) if used[rows[n - 1] + i] or t in needed]
        needed = {t[:-1] for t in kept[n - 1]}
    tree = {"first": torch.tensor([t[0] for t in kept[0]], dtype=torch.long)}
    for n in range(2, correlation + 1):
        position = {t: i for i, t in enumerate(kept[n - 2])}
        tree[f"parent_{n}"] = torch.tensor([position[t[:-1]] for t in kept[n - 1]], dtype=torch.long)
        tree[f"last_{n}"] = torch.tensor([t[-1] for t in kept[n - 1]], dtype=torch.long)
    select = [rows[n] + monomials[n].index(t) for n in range(correlation) for t in kept[n]]
    return outputs, tree, basis[select].contiguous()


class SymmetricContraction(nn.Module):
    """B_i = Σ_{n ≤ ν} W^{(n)}_{z_i} · U^{(n)} · A_i^{⊗n}, channel-wise (see the module docstring).

    Parameters
    ----------
    irreps_in : the density's irreps, ``K x ir_1 + K x ir_2 + ...`` (the same K for every irrep;
        e3nn layout: block by block, channel-major within a block).
    irreps_out : ``K x L_1 + K x L_2 + ...`` (same K), each L reachable from the input.
    correlation : ν >= 1, the highest power of A_i.
    n_species : number of species; ``forward`` takes species indices in [0, n_species).

    ``forward(density [N, irreps_in.dim], species [N]) -> [N, irreps_out.dim]``. The weights
    W^{(n)} of output irrep j are the parameter ``weights["order{n}_out{j}"]`` [n_species, paths, K]
    (absent where no path exists).
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
        # plain ints for forward (torch.compile cannot guard on e3nn's Irreps)
        self._in_blocks = [(sl.start, sl.stop, ir.dim) for sl, (_, ir)
                           in zip(self.irreps_in.slices(), self.irreps_in)]
        with _DISABLE_TORCH_FUNCTION():  # constants: real CPU tensors (see symmetric_power_basis)
            outputs, monomial_tree, basis = _contraction_constants(
                self.irreps_channel, [ir for _, ir in self.irreps_out], self.correlation)
        self.weights = nn.ParameterDict()
        self._outputs: List[Tuple[List[str], int, int]] = []  # per output irrep: (keys, paths, 2L+1)
        for j, ((_, ir), orders) in enumerate(zip(self.irreps_out, outputs)):
            keys = []
            for order, paths in orders:
                key = f"order{order}_out{j}"
                self.weights[key] = nn.Parameter(
                    torch.randn(self.n_species, paths, self.channels) / math.sqrt(paths))
                keys.append(key)
            self._outputs.append((keys, sum(paths for _, paths in orders), ir.dim))
        for name, index in monomial_tree.items():
            self.register_buffer(name, index, persistent=False)
        # The exact float64 constants as int64 bits: module.to(dtype) leaves integer buffers alone,
        # so a float32 model moved to float64 keeps full-precision coefficients (equivariance at
        # float64 round-off); forward casts them to the working dtype.
        self.register_buffer("basis", basis.view(torch.int64), persistent=False)

    def forward(self, density: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n, k, z = density.shape[0], self.channels, self.n_species
        # e3nn layout -> [K, d, N]: gathering monomials along the middle axis copies whole rows
        x = torch.cat([density[:, start:stop].reshape(n, k, dim) for start, stop, dim in self._in_blocks],
                      dim=-1).permute(1, 2, 0)
        powers = [x.index_select(1, self.first)]
        for order in range(2, self.correlation + 1):
            powers.append(powers[-1].index_select(1, getattr(self, f"parent_{order}"))
                          * x.index_select(1, getattr(self, f"last_{order}")))
        # Weights into the basis first (cheap: no atom axis), T[k, z, (L, M), monomial] =
        # Σ_η W_{z,η,k} U_{η,M}(monomial); then one product over the monomials per channel gives
        # every species' output, and each atom keeps its own species' (static shapes, no sync).
        basis = self.basis.view(torch.float64).to(density.dtype)
        merged, start = [], 0
        for keys, paths, dim in self._outputs:
            u = basis[:, start:start + paths * dim].reshape(-1, paths, dim)
            w = torch.cat([self.weights[key] for key in keys], dim=1)  # [Z, paths, K]
            merged.append(torch.einsum("zpk,xpm->kzmx", w, u))
            start += paths * dim
        merged = torch.cat(merged, dim=2)  # [K, Z, D_out, monomials]
        d_out = merged.shape[2]
        every = torch.bmm(merged.flatten(1, 2), torch.cat(powers, dim=1))  # [K, Z * D_out, N]
        mine = every.view(k, z, d_out, n).gather(1, species.view(1, 1, 1, n).expand(k, 1, d_out, n))
        mine = mine.squeeze(1)  # [K, D_out, N]
        out, start = [], 0
        for _, _, dim in self._outputs:
            out.append(mine[:, start:start + dim].permute(2, 0, 1).reshape(n, k * dim))
            start += dim
        return torch.cat(out, dim=-1)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlation}, "
                f"n_species={self.n_species}")
