"""Building blocks shared by the model families.

=====================  ==========================================================================
block                  maths
=====================  ==========================================================================
:class:`BesselBasis`   e_n(r) = sqrt(2 / r_c) sin(n π r / r_c) / r,   n = 1..n_radial     [E, n_radial]
:class:`PolynomialCutoff`
                       f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_c,
                       f = 0 for x >= 1; f, f' and f'' vanish at r_c (smooth forces)      [E]
:class:`SpeciesIndex`  atomic number Z -> row of the model's species list (buffer lookup) [N]
:class:`SpeciesEmbedding`
                       species index -> learnable vector                                  [N, F]
:class:`MLP`           Linear -> SiLU -> ... -> Linear
:class:`Neighborhoods` edges regrouped per centre atom in a padded [N, M] layout
=====================  ==========================================================================

Distances are in Å. Every block works in float32 and float64 and on any device.

Example
-------
>>> import torch
>>> r = torch.tensor([1.0, 2.5, 4.999])
>>> BesselBasis(8, cutoff=5.0)(r).shape, PolynomialCutoff(5.0)(r)[-1].item() < 1e-6
(torch.Size([3, 8]), True)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, List, Optional, Sequence

import torch
from torch import nn

from ase.data import chemical_symbols

from ..indexing import gather_rows, scatter_rows

_MAX_Z = len(chemical_symbols)  # 119: 0 (X) .. 118 (Og)


class Neighborhoods:
    """Edges regrouped per centre atom in a padded layout of R rows of M slots.

    By default row i holds the edges (i, j) of atom i and M is the largest neighbour count. Empty slots
    point at atom 0 and must carry a zero radial weight (``pad`` fills them with zeros), so they
    contribute nothing. In this layout a sum over neighbours is a reduction over the slots or a batched
    matmul (:meth:`sum`, :meth:`sum_outer`), which reads the [E, F] edge tensors once instead of
    materialising and scattering [E, 3, F] products. Works for any edge order.

    With ``share_rows=True``, two atoms share a row when that saves a sixth of the slots and at least
    512 of them: atoms sorted by neighbour count, the k-th fewest paired with the k-th most, each pair's
    edges side by side. In a molecule or a cluster the surface atoms have a fraction of the neighbours
    of the core atoms, and one row per atom would pad every row to the core's count (a 96-atom water
    cluster at 5 Å: 4,320 slots for 2,864 edges, 2,976 when shared). The sums then become batched
    matmuls with each row's two owner masks [R, 2, M] and one gather back to atom order.

    With ``dense=True``, a small structure in which nearly every atom sees every other (N^2 slots at
    most 15 % more than N M) and no pair (i, j) occurs twice (no periodic images) uses the N x N
    layout: slot (i, j) holds atom j, so :meth:`gather` is a broadcast view [1, N, ...] instead of
    an index_select (and its gradient a sum, not a scatter): a PaiNN 128x3 energy+forces call on
    biphenyl (22 atoms) is ~8 % faster. Callers must only combine gathered values by broadcasting
    them against [R, M, ...] tensors.
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int, share_rows: bool = False,
                 dense: bool = False):
        i, j = edge_index[0], edge_index[1]
        n_edges = i.numel()
        device = i.device
        deg = torch.bincount(i, minlength=n_nodes)
        self.n_nodes = n_nodes
        width = int(deg.max()) if n_edges else 0  # M (one host sync)
        n_rows = n_nodes
        self.owners = None  # [R, 2, M] 0/1 masks of each row's two atoms; None: row r is atom r
        self.dense = False
        if dense and n_edges and n_nodes * n_nodes <= _DENSE_PADDING * n_nodes * width:
            flat = i * n_nodes + j
            if int(torch.bincount(flat).max()) == 1:  # each (i, j) at most once (no periodic images)
                self.dense, self.flat = True, flat
                self._sizes = torch.empty((n_nodes, n_nodes, 0), device=device)
                return
        order = torch.argsort(i, stable=True)
        i_sorted = i[order]
        start = torch.cumsum(deg, 0) - deg
        slot = torch.arange(n_edges, device=device) - start[i_sorted]  # rank of the edge within atom i
        row, column = i_sorted, slot
        if share_rows and n_edges:
            pairing = _pair_rows(deg)
            if pairing is not None:
                row_of, first_column, owner_of, n_rows, width = pairing
                row = row_of[i_sorted]
                column = first_column[i_sorted] + slot
                # atom a's sums come out at row 2 * row_of[a] + owner_of[a] of the [2R, ...] results
                self.out_index = 2 * row_of + owner_of
                m = torch.arange(width, device=device)
                lo = first_column.new_zeros(n_rows, 2)
                hi = first_column.new_zeros(n_rows, 2)
                lo[row_of, owner_of] = first_column
                hi[row_of, owner_of] = first_column + deg
                self.owners = (m >= lo[:, :, None]) & (m < hi[:, :, None])  # [R, 2, M]
                self._masks = {}  # owners as 0/1 floats, per dtype
        # R and M as the shape of an empty tensor rather than as ints: torch.compile can then treat
        # them as dynamic sizes (ints it would specialise, recompiling when M changes in MD).
        self._sizes = torch.empty((n_rows, width, 0), device=device)
        self.flat = torch.empty_like(i)
        self.flat[order] = row * width + column  # edge -> slot of the [R * M] layout
        self.neighbor = torch.zeros(n_rows * width, dtype=torch.long, device=device)
        self.neighbor[self.flat] = j  # slot -> neighbour atom j (0 in empty slots)

    @property
    def n_rows(self) -> int:
        """R, the number of rows."""
        return self._sizes.shape[0]

    @property
    def width(self) -> int:
        """M, the slots per row."""
        return self._sizes.shape[1]

    @property
    def shared(self) -> bool:
        """Whether two atoms share a row."""
        return self.owners is not None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Edge tensor [E, ...] -> [R, M, ...] with zeros in empty slots (differentiable)."""
        out = x.new_zeros((self.n_rows * self.width,) + tuple(x.shape[1:]))
        out = out.index_copy(0, self.flat, x)
        return out.view((self.n_rows, self.width) + tuple(x.shape[1:]))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Node tensor [N, ...] -> neighbours' values [R, M, ...] (differentiable)."""
        if self.dense:
            return x.unsqueeze(0)  # slot (i, j) holds atom j: broadcasts over the rows
        return gather_rows(x, self.neighbor).view((self.n_rows, self.width) + tuple(x.shape[1:]))

    def gather_product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``gather(x) * w`` [R, M, ...], ``w`` broadcasting against the gathered values.

        Where the gathered copy would take at least :data:`LEAN_GATHER_BYTES`, the product keeps
        x [N, ...] for its backward pass and gathers it again there, instead of keeping the gathered
        [R, M, ...] copy as a plain product does (:class:`_GatherProduct`)."""
        per_row = x.numel() // max(x.shape[0], 1) * x.element_size()
        if self.dense or self.n_rows * self.width * per_row < LEAN_GATHER_BYTES:
            return self.gather(x) * w  # (dense: the gather is a broadcast view, nothing to keep)
        return _GatherProduct.apply(x, self.neighbor, w, (self.n_rows, self.width))

    def _mask(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._masks:
            self._masks[dtype] = self.owners.to(dtype)
        return self._masks[dtype]

    def _to_atoms(self, y: torch.Tensor) -> torch.Tensor:
        """[R, 2, ...] per-row-owner results -> [N, ...] in atom order."""
        return gather_rows(y.reshape((2 * self.n_rows,) + tuple(y.shape[2:])), self.out_index)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over each atom's slots: [R, M, ...] -> [N, ...]."""
        if not self.shared:
            return x.sum(dim=1)
        y = torch.bmm(self._mask(x.dtype), x.reshape(self.n_rows, self.width, -1))
        return self._to_atoms(y.view((self.n_rows, 2) + tuple(x.shape[2:])))

    def outer_operand(self, u: torch.Tensor) -> torch.Tensor:
        """Prepare per-slot factors u [R, M, D] or [R, M, A, D] for :meth:`sum_outer` (once per graph)."""
        u4 = u if u.dim() == 4 else u.unsqueeze(2)  # [R, M, A, D]
        n_a, n_d = u4.shape[2], u4.shape[3]
        u_t = u4.reshape(self.n_rows, self.width * n_a, n_d).transpose(1, 2)  # [R, D, M*A], a view
        if not self.shared:
            return u_t
        mask = self._mask(u.dtype)[:, :, None, :, None]  # [R, 2, 1, M, 1]
        return (mask * u_t.view(self.n_rows, 1, n_d, self.width, n_a)).reshape(
            self.n_rows, 2 * n_d, self.width * n_a)

    def sum_outer(self, operand: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ over each atom's slots (and A) of u ⊗ x: ``operand`` from :meth:`outer_operand`,
        x [R, M, F] or [R, M, A, F] -> [N, D, F] (one batched matmul)."""
        n_f = x.shape[-1]
        y = torch.bmm(operand, x.reshape(self.n_rows, -1, n_f))  # [R, D, F], or [R, 2D, F] shared
        if not self.shared:
            return y
        return self._to_atoms(y.view(self.n_rows, 2, -1, n_f))


# Gathered copies from this size on are gathered again in the backward pass rather than kept. For
# PaiNN 128x3 on the CPU that keeps 39 % less for the backward pass and costs about 5 % more time
# (benchmarks/memory.py, Cu 6,912: 4,190 -> 2,536 MiB, 2,236 -> 2,342 ms): worth it only where memory
# runs short, from about 4,000 atoms of Cu at 5 Å (32,000 atoms: 2 GiB per copy, two per block).
LEAN_GATHER_BYTES = 256 * 2**20


class _GatherProduct(torch.autograd.Function):
    """out = x[index].view(rows, width, ...) * w, saving x, not the gathered copy.

    Backward: dL/dw = Σ_broadcast (g ∘ x[index]) (x gathered again), dL/dx = index_add(g ∘ w).
    The backward is written in differentiable operations, so second derivatives (training on
    forces) work.
    """

    @staticmethod
    def forward(ctx, x, index, w, rows_width):
        ctx.save_for_backward(x, index, w)
        ctx.rows_width = rows_width
        return gather_rows(x, index).view(rows_width + x.shape[1:]) * w

    @staticmethod
    def backward(ctx, grad):
        x, index, w = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            per_slot = (grad * w).reshape((index.numel(),) + x.shape[1:])
            grad_x = scatter_rows(per_slot, index, x.shape[0])
        if ctx.needs_input_grad[2]:
            gathered = gather_rows(x, index).view(ctx.rows_width + x.shape[1:])
            grad_w = (grad * gathered).sum_to_size(w.shape)
        return grad_x, None, grad_w, None


# Layouts kept for reuse inside a :func:`reuse_layouts` block (None outside one).
_LAYOUT_MEMO: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar(
    "ase_eqgnn_layout_memo", default=None)


@contextlib.contextmanager
def reuse_layouts() -> Iterator[dict]:
    """Inside this block, :func:`neighborhoods` builds each layout once per ``edge_index`` tensor.

    Building a layout reads sizes back from the device (host syncs), which a CUDA graph capture
    forbids: evaluating a model once inside the block and then capturing it in the same block makes
    the capture reuse the layout. Outside a block nothing is kept. The block yields the dict that
    holds the layouts: a captured graph reads their tensors at every replay, so whoever keeps the
    graph must keep the dict too (else their memory is freed and reused under the graph).
    """
    memo: dict = {}
    token = _LAYOUT_MEMO.set(memo)
    try:
        yield memo
    finally:
        _LAYOUT_MEMO.reset(token)


def neighborhoods(edge_index: torch.Tensor, n_nodes: int, **options) -> "Neighborhoods":
    """``Neighborhoods(edge_index, n_nodes, **options)``, reused inside :func:`reuse_layouts`."""
    memo = _LAYOUT_MEMO.get()
    if memo is None:
        return Neighborhoods(edge_index, n_nodes, **options)
    key = (id(edge_index), edge_index._version, n_nodes, tuple(sorted(options.items())))
    hit = memo.get(key)
    if hit is None or hit[0] is not edge_index:  # (an id can be reused by a new tensor)
        hit = memo[key] = (edge_index, Neighborhoods(edge_index, n_nodes, **options))
    return hit[1]


# The dense N x N layout is used while it has at most this many slots per slot of the padded one.
_DENSE_PADDING = 1.15

# Rows are shared only when that saves at least this fraction of the slots and this many slots: each
# shared sum costs a batched matmul and a gather more than a plain reduction, which outweighs the
# saving on small molecules (PaiNN 128x3, A/B in one process: biphenyl, 88 slots saved, 7 % slower;
# a 96-atom water cluster, 1,344 saved, 22 % faster).
_MIN_SHARED_SAVING = 1 / 6
_MIN_SHARED_SLOTS_SAVED = 512


def _pair_rows(deg: torch.Tensor):
    """Pair atoms (fewest neighbours with most) into shared rows, or None if that saves too little.

    Returns ``(row_of [N], first_column [N], owner_of [N], n_rows, width)``.
    """
    n = deg.numel()
    n_rows = (n + 1) // 2
    by_degree = torch.argsort(deg)  # ascending
    low, high = by_degree[: n // 2], by_degree.flip(0)[: n_rows]  # high includes the middle atom
    widths = deg[high].clone()
    widths[: n // 2] += deg[low]
    width = int(widths.max())
    max_deg = int(deg.max())
    saved = n * max_deg - n_rows * width
    if saved < _MIN_SHARED_SAVING * n * max_deg or saved < _MIN_SHARED_SLOTS_SAVED:
        return None
    rows = torch.arange(n_rows, device=deg.device)
    row_of = torch.empty_like(deg)
    owner_of = torch.empty_like(deg)
    first_column = torch.zeros_like(deg)
    row_of[high] = rows
    owner_of[high] = 0
    row_of[low] = rows[: n // 2]
    owner_of[low] = 1
    first_column[low] = deg[high[: n // 2]]  # the low atom's edges follow its partner's
    return row_of, first_column, owner_of, n_rows, width


class BesselBasis(nn.Module):
    """Radial Bessel functions e_n(r) = sqrt(2/r_c) sin(n π r / r_c) / r, n = 1..n_radial.

    Written as ``sqrt(2/r_c) (n π / r_c) sinc(n r / r_c)`` so that it is finite (and differentiable)
    at r = 0. Input: distances [E] in Å; output [E, n_radial] in Å^-3/2. The frequencies n π / r_c
    are a buffer (``trainable=True`` makes them parameters, as in DimeNet).
    """

    def __init__(self, n_radial: int, cutoff: float, trainable: bool = False):
        super().__init__()
        if n_radial < 1:
            raise ValueError(f"n_radial must be a positive integer, got {n_radial}")
        self.cutoff = float(cutoff)
        n = torch.arange(1, n_radial + 1, dtype=torch.get_default_dtype())
        freq = n * math.pi / self.cutoff
        if trainable:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        # sin(w r) / r = w * sinc(w r / π); torch.sinc(x) = sin(π x) / (π x).
        w = self.freq.to(r.dtype)
        return self.prefactor * w * torch.sinc(r[:, None] * w / math.pi)

    def extra_repr(self) -> str:
        return f"n_radial={self.freq.numel()}, cutoff={self.cutoff}"


class PolynomialCutoff(nn.Module):
    """Smooth cutoff envelope (NequIP's polynomial, p = 6 by default): [E] Å -> [E] (unitless).

    f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x = r / r_c < 1, else 0.
    f(0) = 1, and f, df/dr and d²f/dr² are zero at r = r_c, so energies and forces are continuous
    when a neighbour crosses the cutoff.
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        if p < 2:
            raise ValueError(f"the envelope exponent p must be >= 2 for smooth forces, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.cutoff
        f = (1.0 - 0.5 * (p + 1) * (p + 2) * x.pow(p) + p * (p + 2) * x.pow(p + 1)
             - 0.5 * p * (p + 1) * x.pow(p + 2))
        return torch.where(x < 1.0, f, torch.zeros_like(f))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


def normalize_species(species: Sequence) -> List[int]:
    """Atomic numbers (ints or element symbols) -> sorted list of distinct ints; ValueError if bad."""
    if isinstance(species, (str, bytes)) or not hasattr(species, "__iter__"):
        raise ValueError(f"species must be a list of atomic numbers or element symbols, got {species!r}")
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in chemical_symbols[1:]:
                raise ValueError(f"unknown element symbol {s!r} in species")
            z = chemical_symbols.index(s)
        else:
            try:
                z = int(s)
            except (TypeError, ValueError):
                raise ValueError(f"species entries must be atomic numbers or symbols, got {s!r}") from None
            if z != s or not 1 <= z < _MAX_Z:
                raise ValueError(f"atomic number {s!r} in species is not an element (1..{_MAX_Z - 1})")
        out.append(z)
    if not out:
        raise ValueError("species must name at least one element")
    if len(set(out)) != len(out):
        raise ValueError(f"species lists an element twice: {species!r}")
    return sorted(out)


def _format_species(species: Sequence[int]) -> str:
    return "[" + ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in species) + "]"


class SpeciesIndex(nn.Module):
    """Atomic numbers [N] (int64) -> indices [N] into the model's ``species`` list.

    The lookup is a buffer of size 119 (-1 for elements the model does not know), so it moves with the
    model to any device. An unknown element raises ``ValueError`` naming it and the model's species
    (this check reads one boolean back from the device).
    """

    def __init__(self, species: Sequence[int]):
        super().__init__()
        self.species = normalize_species(species)
        table = torch.full((_MAX_Z,), -1, dtype=torch.long)
        table[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("table", table)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.to(device=self.table.device, dtype=torch.long)
        idx = self.table[numbers.clamp(0, _MAX_Z - 1)]
        bad = (idx < 0) | (numbers < 0) | (numbers >= _MAX_Z)
        # (checked when not being captured into a CUDA graph: a check reads the device back)
        capturing = idx.is_cuda and torch.cuda.is_current_stream_capturing()
        if numbers.numel() and not capturing and bool(bad.any()):
            unknown = sorted(set(numbers[bad].tolist()))
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" if 0 < z < _MAX_Z else f"Z={z}"
                              for z in unknown)
            raise ValueError(f"unknown element {names} for this model; its species are "
                             f"{_format_species(self.species)}")
        return idx

    def extra_repr(self) -> str:
        return f"species={self.species}"


class SpeciesEmbedding(nn.Module):
    """Species indices [N] (from :class:`SpeciesIndex`) -> learnable features [N, features]."""

    def __init__(self, n_species: int, features: int):
        super().__init__()
        self.embedding = nn.Embedding(n_species, features)

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.embedding(species)


class MLP(nn.Sequential):
    """Dense network ``dims[0] -> dims[1] -> ... -> dims[-1]``: Linear, SiLU between layers.

    ``bias_last=False`` drops the bias of the last layer (used where the output must vanish with
    its input); ``act_last=True`` also applies SiLU after the last layer.
    """

    def __init__(self, dims: Sequence[int], bias_last: bool = True, act_last: bool = False):
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
        layers: List[nn.Module] = []
        for k in range(len(dims) - 1):
            last = k == len(dims) - 2
            layers.append(nn.Linear(dims[k], dims[k + 1], bias=bias_last or not last))
            if not last or act_last:
                layers.append(nn.SiLU())
        super().__init__(*layers)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``int(value)`` if it is an integer >= minimum (bools rejected), else ValueError naming it."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"hyper-parameter {name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"hyper-parameter {name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number > 0, else ValueError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"hyper-parameter {name} must be a positive number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0:
        raise ValueError(f"hyper-parameter {name} must be a finite positive number, got {value!r}")
    return out


def edge_lengths(edge_vec: torch.Tensor) -> torch.Tensor:
    """|r_ij| [E] from edge vectors [E, 3] (Å)."""
    return torch.linalg.vector_norm(edge_vec, dim=-1)


__all__ = [
    "Neighborhoods", "neighborhoods", "reuse_layouts", "BesselBasis", "PolynomialCutoff",
    "SpeciesIndex", "SpeciesEmbedding", "MLP",
    "normalize_species", "check_positive_int", "check_positive_float", "edge_lengths",
]
