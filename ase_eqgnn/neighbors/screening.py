"""Screening candidate pairs of the cell list, and the packed form its shifts travel in.

Candidates are screened in float32 and only the thin band within float32 round-off of the cutoff is
checked again in float64, so the list is exact (see :mod:`ase_eqgnn.neighbors.cell_list`).
"""

from __future__ import annotations

import torch

# Candidate pairs per chunk: bounds peak memory (~100 bytes per candidate) for very large systems.
_MAX_CANDIDATES_PER_CHUNK = 4_000_000
# Padded candidate rows are used while they hold at most this many slots per real candidate.
_MAX_PADDING = 2.5

# Shifts are carried as one int64 per pair, three biased 20-bit fields: torch gathers and adds 1-D
# tensors several times faster than [E, 3] rows. Packing is linear (exact integer arithmetic), so
# packed values add and subtract field by field while every field stays within its 20 bits.
FIELD_BITS = 20
FIELD_BIAS = 1 << (FIELD_BITS - 1)
PACK_LIMIT = 1 << (FIELD_BITS - 3)  # |image|, |wrap| below this keep image + wrap_i - wrap_j in range


def pack(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] integers -> [...] int64, ``v0 * 2^40 + v1 * 2^20 + v2``."""
    return (v[..., 0] * (1 << 2 * FIELD_BITS) + v[..., 1] * (1 << FIELD_BITS)).add_(v[..., 2])


def unpack(code: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack(v + FIELD_BIAS)`` into ``out`` [E, 3]."""
    bits = torch.tensor([2 * FIELD_BITS, FIELD_BITS, 0], device=code.device)
    torch.bitwise_right_shift(code[:, None], bits, out=out)
    return out.bitwise_and_((1 << FIELD_BITS) - 1).sub_(FIELD_BIAS)


def bin_gap_sq(in_bin: torch.Tensor, thickness: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Squared distance from each atom to each neighbouring bin, [n, M], in an orthogonal frame.

    ``in_bin`` [n, 3] is the atom's position inside its bin in bin widths, ``thickness`` [n, 3] the bin
    widths (Å; zero disables pruning), ``offsets`` [M, 3] the bin offsets. Along one direction the gap
    to the bin ``o`` bins away is ``o - u`` (o > 0), ``u - o - 1`` (o < 0) or 0 bin widths; the three
    directions add in quadrature. Tabulated per (direction, offset value) first, then summed per offset.
    """
    reach = int(offsets.abs().max())
    o = torch.arange(-reach, reach + 1, device=in_bin.device, dtype=in_bin.dtype)
    u = in_bin[:, :, None]
    gap = torch.where(o > 0, o - u, torch.where(o < 0, u - o - 1, torch.zeros_like(u)))
    gap = (gap.clamp_(min=0) * thickness[:, :, None]).square_().flatten(1)  # [n, 3 * (2 reach + 1)]
    column = offsets + reach + (2 * reach + 1) * torch.arange(3, device=offsets.device)
    return (gap.index_select(1, column[:, 0]) + gap.index_select(1, column[:, 1])).add_(
        gap.index_select(1, column[:, 2]))


def screen_windows(padded32, s_cols, shift_cols32, shift_cols, atom, table_row, starts, cnt,
                    width: int, screen_sq: float, sure_sq: float, cutoff_sq: float):
    """Pairs within the cutoff among padded candidate rows: ``(row, j)`` in sorted indices.

    Each row (an atom i and a neighbouring bin) is a run of ``cnt`` consecutive sorted atoms from
    ``starts``; rows are padded to ``width`` so that the run is a window view of the positions (no
    copy; gathering a row copies ``width`` contiguous numbers) and atom i's coordinates broadcast along
    it. ``padded32`` is ``s_cols`` in float32 followed by at least ``width`` padding columns. Screened
    in float32 (half the memory traffic); only pairs within ``margin`` of the cutoff are checked again
    in float64.
    """
    n_atoms = s_cols.shape[1]
    dist_sq = None
    for d in range(3):
        # atom i minus the lattice image of the bin, so that r_ij = pos[j] - base
        base = padded32[d].index_select(0, atom) - shift_cols32[d].index_select(0, table_row)
        windows = padded32[d].as_strided((n_atoms, width), (1, 1))  # row k = padded32[d][k : k + width]
        diff = windows.index_select(0, starts).sub_(base[:, None])
        dist_sq = diff.square_() if dist_sq is None else dist_sq.addcmul_(diff, diff)
    slot = torch.arange(width, device=starts.device)
    close = ((dist_sq < screen_sq) & (slot < cnt[:, None])).nonzero()  # [C, 2] (row, slot)
    row, slot = close[:, 0], close[:, 1]
    band = (dist_sq[row, slot] >= sure_sq).nonzero().squeeze(1)
    sj = starts.index_select(0, row).add_(slot)
    if band.numel():
        rb = row.index_select(0, band)
        exact = exact_dist_sq(s_cols, shift_cols, atom.index_select(0, rb),
                               table_row.index_select(0, rb), sj.index_select(0, band))
        outside = band[exact >= cutoff_sq]
        if outside.numel():
            row, sj = drop(outside, row, sj)
    return row, sj


def drop(drop: torch.Tensor, *columns: torch.Tensor):
    """``columns`` without the entries at the (few, sorted, distinct) positions ``drop``.

    Order is not kept: the last entries move into the holes, so the cost is O(len(drop)), not a
    pass over the columns.
    """
    n, k = columns[0].numel(), drop.numel()
    tail = torch.arange(n - k, n, device=drop.device)
    movers = tail[~torch.isin(tail, drop)]  # tail entries that stay
    holes = drop[drop < n - k]
    out = []
    for c in columns:
        moved = c[movers]
        c = c[: n - k]  # a view: the columns are scratch arrays of the caller
        c[holes] = moved
        out.append(c)
    return out


def exact_dist_sq(s_cols, shift_cols, i, table_row, j) -> torch.Tensor:
    """float64 squared distances of pairs (sorted indices i, j; image from ``table_row``)."""
    dist_sq = None
    for d in range(3):
        base = s_cols[d].index_select(0, i) - shift_cols[d].index_select(0, table_row)
        diff = s_cols[d].index_select(0, j) - base
        dist_sq = diff * diff if dist_sq is None else dist_sq.addcmul_(diff, diff)
    return dist_sq


def screen_flat(s_cols, shift_cols, atom, table_row, starts, cnt, n_cand: int, cutoff_sq: float):
    """Like :func:`screen_windows` for very uneven bins: one flat run of candidates, no padding."""
    rep = torch.repeat_interleave(torch.arange(cnt.numel(), device=cnt.device), cnt,
                                  output_size=n_cand)
    # j = first + local index = arange + (first - exclusive cumsum of counts): one gather
    jump = starts - (torch.cumsum(cnt, 0) - cnt)
    sj = torch.arange(n_cand, device=cnt.device) + jump.index_select(0, rep)
    dist_sq = exact_dist_sq(s_cols, shift_cols, atom.index_select(0, rep),
                             table_row.index_select(0, rep), sj)
    close = (dist_sq < cutoff_sq).nonzero().flatten()
    return rep.index_select(0, close), sj.index_select(0, close)
