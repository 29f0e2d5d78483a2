"""Fast neighbourhoods: edges regrouped per atom in padded rows (the speed-ups, in one place).

These implement the interface of :mod:`.neighborhood` with the same numbers as the reference
:class:`~.neighborhood.EdgeList` (``tests/test_layouts.py`` checks values, forces, stress and
force-loss parameter gradients for every layout). Why they are faster: work on edges is
memory-bound. In a padded [R, M] layout (R rows of M slots) a sum over neighbours is a reduction over
the slots or a batched matmul, which reads the [E, F] edge tensors once instead of materialising and
scattering [E, 3, F] products; Σ_j u_ij ⊗ m_ij is one batched matmul.

Four layouts, chosen per neighbour list by :class:`PaddedNeighborhood` and its thresholds below:

- **padded**: row i holds the edges (i, j) of atom i, M = the largest neighbour count. Empty slots
  point at atom 0 and carry zeros (``edges`` pads with zeros), so they contribute nothing. Atoms
  after the last centre (LAMMPS's ghost atoms, with the halo exchange) get no rows: their sums are 0.
- **shared rows** (``share_rows=True``): two atoms share a row when that saves a sixth of the slots
  and at least 512 of them (atoms sorted by neighbour count, the k-th fewest paired with the k-th
  most). In a molecule or a cluster the surface atoms have a fraction of the core's neighbours
  (a 96-atom water cluster at 5 Å: 4,320 slots for 2,864 edges padded, 2,976 shared). Sums then
  become batched matmuls with each row's two owner masks [R, 2, M] and one gather back to atom order.
- **dense** (``dense=True``): a small structure where nearly every atom sees every other (N² slots at
  most 15 % more than N M) and no pair occurs twice (no periodic images) uses the N x N layout:
  slot (i, j) holds atom j, so ``gather`` is a broadcast view [1, N, ...] and its gradient a sum, not
  a scatter.
- **re-gathering**: where a gathered copy [R, M, ...] would reach :data:`LEAN_GATHER_BYTES`,
  ``gather_product`` keeps the per-atom tensor for the backward pass and gathers it again there
  (:class:`_GatherProduct`) instead of keeping the copy.

Measurements behind the thresholds are in ``docs/benchmarks.md``.

Example
-------
>>> import torch
>>> edge_index = torch.tensor([[0, 0, 1], [1, 2, 0]])
>>> nbh = PaddedNeighborhood(edge_index, 3)
>>> x = torch.tensor([[1.0], [10.0], [100.0]])
>>> nbh.sum(nbh.gather_product(x, nbh.edges(torch.ones(3, 1)))).flatten().tolist()
[110.0, 1.0, 0.0]
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch

from ..indexing import gather_rows, scatter_rows

# Gathered copies from this size on are gathered again in the backward pass rather than kept
# (PaiNN 128x3 on the CPU: 39 % less memory kept for the force pass for ~5 % more time; worth it only
# where memory runs short, from about 4,000 Cu atoms at 5 Å).
LEAN_GATHER_BYTES = 256 * 2**20

# The dense N x N layout is used while it has at most this many slots per slot of the padded one.
_DENSE_PADDING = 1.15

# Rows are shared only when that saves at least this fraction of the slots and this many slots: each
# shared sum costs a batched matmul and a gather more than a plain reduction, which outweighs the
# saving on small molecules.
_MIN_SHARED_SAVING = 1 / 6
_MIN_SHARED_SLOTS_SAVED = 512


class PaddedNeighborhood:
    """Edges regrouped per centre atom in R rows of M slots (see the module docstring).

    Works for any edge order. ``share_rows`` and ``dense`` allow those layouts where the thresholds
    say they pay; :attr:`shared` and :attr:`dense` tell which one was built.
    """

    halo = None  # (see EdgeList.halo)

    def __init__(self, edge_index: torch.Tensor, n_nodes: int, share_rows: bool = False,
                 dense: bool = False):
        i, j = edge_index[0], edge_index[1]
        n_edges = i.numel()
        device = i.device
        deg = torch.bincount(i, minlength=n_nodes)
        self.n_nodes = n_nodes
        # M, and C = 1 + the last centre atom: atoms after it have no edges and get no rows (LAMMPS
        # numbers its ghost atoms last, and with the halo exchange they are never centres)
        width, last = torch.stack([deg.max(), i.max()]).tolist() if n_edges else (0, -1)  # one sync
        n_rows = n_centres = last + 1
        deg = deg[:n_centres]
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
        if self.owners is not None:
            self.centre_of_slot = torch.zeros_like(self.neighbor)
            self.centre_of_slot[self.flat] = i  # slot -> centre atom i (0 in empty slots)

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

    def _rows(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view((self.n_rows, self.width) + tuple(flat.shape[1:]))

    # ---------------------------------------------------------------- the interface
    def edges(self, t: torch.Tensor) -> torch.Tensor:
        """Edge tensor [E, ...] -> [R, M, ...] with zeros in empty slots (differentiable)."""
        out = t.new_zeros((self.n_rows * self.width,) + tuple(t.shape[1:]))
        return self._rows(out.index_copy(0, self.flat, t))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Node tensor [N, ...] -> neighbours' values [R, M, ...] (dense: a view [1, N, ...])."""
        if self.dense:
            return x.unsqueeze(0)  # slot (i, j) holds atom j: broadcasts over the rows
        return self._rows(gather_rows(x, self.neighbor))

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """Node tensor [N, ...] -> centre atoms' values [R, M, ...] (a view [R, 1, ...] unless shared)."""
        if self.shared:
            return self._rows(gather_rows(x, self.centre_of_slot))
        return x.narrow(0, 0, self.n_rows).unsqueeze(1)  # row r is atom r

    def gather_product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``gather(x) * w`` [R, M, ...], ``w`` broadcasting against the gathered values; where the
        gathered copy would take at least :data:`LEAN_GATHER_BYTES`, gathered again in the backward
        pass instead of kept (:class:`_GatherProduct`)."""
        per_row = x.numel() // max(x.shape[0], 1) * x.element_size()
        if self.dense or self.n_rows * self.width * per_row < LEAN_GATHER_BYTES:
            return self.gather(x) * w  # (dense: the gather is a broadcast view, nothing to keep)
        return _GatherProduct.apply(x, self.neighbor, w, (self.n_rows, self.width))

    def sum(self, m: torch.Tensor) -> torch.Tensor:
        """Σ over each atom's slots: [R, M, ...] -> [N, ...]."""
        if not self.shared:
            return self._all_atoms(m.sum(dim=1))
        y = torch.bmm(self._mask(m.dtype), m.reshape(self.n_rows, self.width, -1))
        return self._to_atoms(y.view((self.n_rows, 2) + tuple(m.shape[2:])))

    def sum_outer(self, u: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Σ over each atom's slots (and axis A) of u ⊗ m: u [R, M, (A,) D], m [R, M, (A,) F] ->
        [N, D, F] (one batched matmul)."""
        return self.sum_outer_prepared(self.outer_operand(u), m)

    # ---------------------------------------------------------------- beyond the interface
    def outer_operand(self, u: torch.Tensor) -> torch.Tensor:
        """u [R, M, D] or [R, M, A, D] prepared for :meth:`sum_outer_prepared`, for callers that
        reuse one u with many m (the fused tensor product)."""
        u4 = u if u.dim() == 4 else u.unsqueeze(2)  # [R, M, A, D]
        n_a, n_d = u4.shape[2], u4.shape[3]
        u_t = u4.reshape(self.n_rows, self.width * n_a, n_d).transpose(1, 2)  # [R, D, M*A], a view
        if not self.shared:
            return u_t
        mask = self._mask(u.dtype)[:, :, None, :, None]  # [R, 2, 1, M, 1]
        return (mask * u_t.view(self.n_rows, 1, n_d, self.width, n_a)).reshape(
            self.n_rows, 2 * n_d, self.width * n_a)

    def sum_outer_prepared(self, operand: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """:meth:`sum_outer` with u prepared by :meth:`outer_operand`."""
        n_f = m.shape[-1]
        y = torch.bmm(operand, m.reshape(self.n_rows, -1, n_f))  # [R, D, F], or [R, 2D, F] shared
        if not self.shared:
            return self._all_atoms(y)
        return self._to_atoms(y.view(self.n_rows, 2, -1, n_f))

    def _mask(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._masks:
            self._masks[dtype] = self.owners.to(dtype)
        return self._masks[dtype]

    def _to_atoms(self, y: torch.Tensor) -> torch.Tensor:
        """[R, 2, ...] per-row-owner results -> [N, ...] in atom order."""
        return self._all_atoms(gather_rows(y.reshape((2 * self.n_rows,) + tuple(y.shape[2:])),
                                           self.out_index))

    def _all_atoms(self, y: torch.Tensor) -> torch.Tensor:
        """Sums of the atoms up to the last centre [C, ...] -> [N, ...], zeros for the rest."""
        missing = self.n_nodes - y.shape[0]
        return y if missing == 0 else torch.cat([y, y.new_zeros((missing,) + tuple(y.shape[1:]))])


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


def neighborhoods(edge_index: torch.Tensor, n_nodes: int, **options) -> PaddedNeighborhood:
    """``PaddedNeighborhood(edge_index, n_nodes, **options)``, reused inside :func:`reuse_layouts`."""
    memo = _LAYOUT_MEMO.get()
    if memo is None:
        return PaddedNeighborhood(edge_index, n_nodes, **options)
    key = (id(edge_index), edge_index._version, n_nodes, tuple(sorted(options.items())))
    hit = memo.get(key)
    if hit is None or hit[0] is not edge_index:  # (an id can be reused by a new tensor)
        hit = memo[key] = (edge_index, PaddedNeighborhood(edge_index, n_nodes, **options))
    return hit[1]


__all__ = ["PaddedNeighborhood", "neighborhoods", "reuse_layouts", "LEAN_GATHER_BYTES"]
