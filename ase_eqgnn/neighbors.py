"""Neighbour lists in torch: O(N) cell lists, any cell and pbc, CPU and CUDA.

The public functions return a *full* list (both directions) as three int64 tensors ``(i, j, shifts)``
such that the vector from atom ``i`` to atom ``j`` is

    r_ij = positions[j] - positions[i] + shifts @ cell,      |r_ij| < cutoff,

the same set of ``(i, j, shift)`` triples as ``ase.neighborlist.neighbor_list("ijS", atoms, cutoff)``.
The list is integer data: models recompute distances from positions so that gradients flow.

How the cell list works
-----------------------
Positions are expressed in a *binning frame*: the lattice vectors along periodic directions, and an
orthonormal completion along the others. Periodic fractional coordinates are wrapped into [0, 1) (the
integer wrap is remembered and folded into the returned shifts). Each direction is cut into bins whose
thickness (distance between bin faces) is at least ``cutoff / subdivisions``, so two atoms closer than
the cutoff sit at most ``k = subdivisions`` bins apart along each direction (more, when the cell is thinner
than the cutoff: then the same bin is visited through several lattice images). Only half of the bin
offsets are visited (lexicographically positive ones plus the own bin with ``j > i``); the other half
is the mirror image. Candidates are screened in rows, one per (atom, neighbouring bin), padded to the
fullest bin: the sorted positions of a bin are contiguous, so a row is a window of them and atom i's
coordinates broadcast along it (very uneven bins fall back to one flat run of candidates). The screen
runs in float32 and keeps the pairs clearly inside the cutoff; only the thin band within float32
round-off of the cutoff is checked again in float64, so the list is exact. Shifts travel as one packed
int64 per pair until the output is written. Work and memory are O(N) for a fixed density.

Example
-------
>>> import torch
>>> from ase.build import bulk
>>> atoms = bulk("Cu", "fcc", a=3.6)
>>> i, j, S = neighbor_list(torch.tensor(atoms.positions), 3.0, torch.tensor(atoms.cell[:]), [True] * 3)
>>> int(i.numel())  # 12 nearest neighbours of the one atom, all images of itself
12
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import numpy as np
import torch

Pairs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Candidate pairs per chunk: bounds peak memory (~100 bytes per candidate) for very large systems.
_MAX_CANDIDATES_PER_CHUNK = 4_000_000
# Padded candidate rows are used while they hold at most this many slots per real candidate.
_MAX_PADDING = 2.5

# Shifts are carried as one int64 per pair, three biased 20-bit fields: torch gathers and adds 1-D
# tensors several times faster than [E, 3] rows. Packing is linear (exact integer arithmetic), so
# packed values add and subtract field by field while every field stays within its 20 bits.
_FIELD_BITS = 20
_FIELD_BIAS = 1 << (_FIELD_BITS - 1)
_PACK_LIMIT = 1 << (_FIELD_BITS - 3)  # |image|, |wrap| below this keep image + wrap_i - wrap_j in range


def _pack(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] integers -> [...] int64, ``v0 * 2^40 + v1 * 2^20 + v2``."""
    return (v[..., 0] * (1 << 2 * _FIELD_BITS) + v[..., 1] * (1 << _FIELD_BITS)).add_(v[..., 2])


def _unpack(code: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_pack(v + _FIELD_BIAS)`` into ``out`` [E, 3]."""
    bits = torch.tensor([2 * _FIELD_BITS, _FIELD_BITS, 0], device=code.device)
    torch.bitwise_right_shift(code[:, None], bits, out=out)
    return out.bitwise_and_((1 << _FIELD_BITS) - 1).sub_(_FIELD_BIAS)


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------
def _check_cutoff(cutoff: float) -> float:
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not math.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"cutoff must be a finite positive number of Å, got {cutoff}")
    return cutoff


def _as_positions(positions) -> torch.Tensor:
    positions = torch.as_tensor(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {tuple(positions.shape)}")
    if not positions.is_floating_point():
        positions = positions.to(torch.float64)
    if positions.numel() and not bool(torch.isfinite(positions).all()):
        bad = (~torch.isfinite(positions)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad}...)")
    return positions


def _as_cells(cell, pbc, n_graphs: int, device) -> Tuple[np.ndarray, np.ndarray]:
    """Cells [B, 3, 3] and pbc [B, 3] as float64/bool numpy arrays (they are tiny)."""
    if cell is None:
        cell_np = np.zeros((n_graphs, 3, 3))
    else:
        cell_np = np.asarray(torch.as_tensor(cell).detach().cpu().to(torch.float64)
                             if isinstance(cell, torch.Tensor) else cell, dtype=np.float64)
        if cell_np.shape == (3, 3):
            cell_np = np.broadcast_to(cell_np, (n_graphs, 3, 3))
        if cell_np.shape != (n_graphs, 3, 3):
            raise ValueError(f"cell must have shape [3, 3] or [{n_graphs}, 3, 3], got {cell_np.shape}")
    if not np.isfinite(cell_np).all():
        raise ValueError("cell contains NaN or infinite values")
    if pbc is None:
        pbc_np = np.zeros((n_graphs, 3), dtype=bool)
    else:
        pbc_np = np.asarray(pbc.detach().cpu() if isinstance(pbc, torch.Tensor) else pbc)
        if pbc_np.dtype != bool and not np.isin(pbc_np, (0, 1)).all():
            raise ValueError(f"pbc must be booleans, got {pbc_np}")
        pbc_np = pbc_np.astype(bool)
        if pbc_np.shape in ((), (1,)):
            pbc_np = np.full((n_graphs, 3), bool(pbc_np.reshape(-1)[0]))
        elif pbc_np.shape == (3,):
            pbc_np = np.broadcast_to(pbc_np, (n_graphs, 3))
        if pbc_np.shape != (n_graphs, 3):
            raise ValueError(f"pbc must have shape [3] or [{n_graphs}, 3], got {pbc_np.shape}")
    return np.array(cell_np), np.array(pbc_np)


# ------------------------------------------------------------------------------------------------
# Binning frame
# ------------------------------------------------------------------------------------------------
def _binning_frame(cell: np.ndarray, pbc: np.ndarray, graph: int = 0) -> np.ndarray:
    """Rows: lattice vectors along periodic directions, an orthonormal completion elsewhere.

    Raises ``ValueError`` when the periodic lattice vectors are (nearly) linearly dependent.
    """
    periodic = [d for d in range(3) if pbc[d]]
    vecs = cell[periodic]
    if len(periodic):
        # Gram determinant = squared volume of the periodic sub-lattice.
        gram = np.linalg.det(vecs @ vecs.T)
        scale = np.prod(np.sum(vecs**2, axis=1))
        if not gram > 1e-20 * max(scale, 1e-300) or scale == 0.0:
            names = "".join("xyz"[d] for d in periodic)
            raise ValueError(
                f"cell of structure {graph} is singular along its periodic directions ({names}): "
                f"lattice vectors {vecs.tolist()} span no volume; give a proper cell or set pbc=False "
                "along the degenerate direction")
    frame = np.zeros((3, 3))
    frame[periodic] = vecs
    free = [d for d in range(3) if not pbc[d]]
    if len(free) == 3:
        frame = np.eye(3)
    elif len(free) == 2:
        a = vecs[0] / np.linalg.norm(vecs[0])
        helper = np.eye(3)[np.argmin(np.abs(a))]
        u = np.cross(a, helper)
        u /= np.linalg.norm(u)
        frame[free[0]] = u
        frame[free[1]] = np.cross(a, u)
    elif len(free) == 1:
        n = np.cross(vecs[0], vecs[1])
        frame[free[0]] = n / np.linalg.norm(n)
    return frame


# ------------------------------------------------------------------------------------------------
# The cell list
# ------------------------------------------------------------------------------------------------
def batched_neighbor_list(
    positions: torch.Tensor,
    cutoff: float,
    batch: Optional[torch.Tensor] = None,
    cell=None,
    pbc=None,
    subdivisions: int = 1,
    use_cluster: bool = True,
) -> Pairs:
    """Neighbour list of many structures at once.

    Parameters
    ----------
    positions : [N, 3] Cartesian positions (Å) of all atoms, structures concatenated.
    cutoff : radius (Å); pairs with distance strictly below it are returned.
    batch : [N] int64 index of each atom's structure (``None``: one structure).
    cell : [B, 3, 3] or [3, 3] lattice vectors as rows (Å); ignored along non-periodic directions.
    pbc : [B, 3] or [3] booleans.
    use_cluster : for non-periodic structures on CUDA, use torch-cluster's ``radius_graph`` when the
        optional ``torch-cluster`` package is installed (see :func:`cluster_neighbor_list`).
    subdivisions : bins per cutoff length (1 is fastest in torch on CPU; finer bins visit fewer
        far-away candidates but cost more per atom).

    Returns
    -------
    ``(i, j, shifts)``: int64 tensors [E], [E], [E, 3] on the device of ``positions``; global atom
    indices, in no particular order.
    """
    cutoff = _check_cutoff(cutoff)
    positions = _as_positions(positions)
    device = positions.device
    n_atoms = positions.shape[0]
    if batch is None:
        batch = torch.zeros(n_atoms, dtype=torch.long, device=device)
    else:
        batch = torch.as_tensor(batch, device=device)
        if batch.shape != (n_atoms,) or batch.is_floating_point():
            raise ValueError(f"batch must be an integer tensor of shape [{n_atoms}], got "
                             f"{tuple(batch.shape)} {batch.dtype}")
        batch = batch.long()
    if cell is not None and torch.as_tensor(cell).ndim == 3:
        n_graphs = int(torch.as_tensor(cell).shape[0])
    elif pbc is not None and np.ndim(pbc.cpu() if isinstance(pbc, torch.Tensor) else pbc) == 2:
        n_graphs = int(torch.as_tensor(pbc).shape[0])
    else:
        n_graphs = int(batch.max()) + 1 if n_atoms else 1
    if n_atoms and (int(batch.min()) < 0 or int(batch.max()) >= n_graphs):
        raise ValueError(f"batch values must lie in [0, {n_graphs}) (one cell per structure)")
    cell_np, pbc_np = _as_cells(cell, pbc, n_graphs, device)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n_atoms == 0:
        return empty, empty, torch.zeros(0, 3, dtype=torch.long, device=device)

    if use_cluster and not pbc_np.any() and device.type == "cuda" and cluster_available():
        return cluster_neighbor_list(positions, cutoff, batch)

    frames = np.stack([_binning_frame(cell_np[b], pbc_np[b], b) for b in range(n_graphs)])
    f64 = torch.float64
    pos = positions.detach().to(f64)
    cell_t = torch.as_tensor(cell_np, dtype=f64, device=device)
    pbc_t = torch.as_tensor(pbc_np, device=device)
    inv_frames = torch.as_tensor(np.linalg.inv(frames), dtype=f64, device=device)

    # Fractional coordinates in the binning frame; wrap periodic ones into [0, 1).
    def per_atom(x, matrices):  # x[n] @ matrices[batch[n]]; one matmul for a single structure
        return x @ matrices[0] if n_graphs == 1 else torch.einsum("nk,nkl->nl", x, matrices[batch])

    def per_structure(table, index):  # table[index] for a table with one row per structure
        if n_graphs == 1:  # a broadcast view: indexing a one-row table costs as much as a copy
            return table.expand((index.shape[0],) + tuple(table.shape[1:]))
        return table[index]

    frac = per_atom(pos, inv_frames)
    atom_pbc = per_structure(pbc_t, batch)
    wrap = torch.where(atom_pbc, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    wrap = wrap.long()
    pos_wrapped = pos - per_atom(wrap.to(f64), cell_t)

    # Per-structure extent of fractional coordinates along non-periodic directions (one sync).
    if pbc_np.all():
        lo_np, hi_np = np.zeros((n_graphs, 3)), np.ones((n_graphs, 3))  # unused when all periodic
    else:
        big = torch.finfo(f64).max
        lo = torch.full((n_graphs, 3), big, dtype=f64, device=device).scatter_reduce(
            0, batch[:, None].expand(-1, 3), frac, "amin", include_self=True)
        hi = torch.full((n_graphs, 3), -big, dtype=f64, device=device).scatter_reduce(
            0, batch[:, None].expand(-1, 3), frac, "amax", include_self=True)
        lo_np, hi_np = lo.cpu().numpy(), hi.cpu().numpy()
    counts_per_graph = torch.bincount(batch, minlength=n_graphs).cpu().numpy()

    # Bin grid per structure (host side: a handful of numbers per structure).
    n_bins = np.ones((n_graphs, 3), dtype=np.int64)
    reach = np.zeros((n_graphs, 3), dtype=np.int64)  # bins to visit either side
    origin = np.zeros((n_graphs, 3))
    span = np.ones((n_graphs, 3))
    thickness = np.zeros((n_graphs, 3))  # distance between bin faces, Å
    orthogonal = np.zeros(n_graphs, dtype=bool)
    for b in range(n_graphs):
        if counts_per_graph[b] == 0:
            continue
        f = frames[b]
        gram = f @ f.T
        orthogonal[b] = np.allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-12 * gram.max())
        volume = abs(np.linalg.det(f))
        heights = np.array([volume / np.linalg.norm(np.cross(f[(d + 1) % 3], f[(d + 2) % 3]))
                            for d in range(3)])
        for d in range(3):
            if pbc_np[b, d]:
                origin[b, d], span[b, d] = 0.0, 1.0
            else:
                origin[b, d] = lo_np[b, d]
                span[b, d] = max(hi_np[b, d] - lo_np[b, d], 0.0)
        length = span[b] * heights  # extent of the binned region along each direction, Å
        target = cutoff / subdivisions
        nb = np.maximum(1, np.floor(length / target)).astype(np.int64)
        # Sparse systems: never more bins than ~2 per atom (the cost would be in empty bins).
        limit = max(2 * int(counts_per_graph[b]), 8)
        while np.prod(nb) > limit:
            nb = np.maximum(1, nb // 2)
        n_bins[b] = nb
        thickness[b] = length / nb
        for d in range(3):
            if not pbc_np[b, d] and nb[d] == 1:
                reach[b, d] = 0  # a single bin along an open direction: nothing else to visit
            else:
                reach[b, d] = int(math.ceil(cutoff / thickness[b, d] - 1e-12)) \
                    if thickness[b, d] > 0 else 0
        span[b] = np.where(span[b] > 0, span[b], 1.0)

    n_bins_t = torch.as_tensor(n_bins, device=device)
    bin_base = torch.as_tensor(np.concatenate([[0], np.cumsum(np.prod(n_bins, axis=1))[:-1]]),
                               device=device)
    total_bins = int(np.prod(n_bins, axis=1).sum())

    # Bin of each atom.
    atom_nb = per_structure(n_bins_t, batch)
    origin_t = torch.as_tensor(origin, dtype=f64, device=device)
    span_t = torch.as_tensor(span, dtype=f64, device=device)
    rel = (frac - per_structure(origin_t, batch)) / per_structure(span_t, batch)
    scaled = rel * atom_nb
    coord = torch.minimum(torch.clamp(torch.floor(scaled).long(), min=0), atom_nb - 1)
    in_bin = scaled - coord  # position inside the bin, in bin widths, [0, 1]

    def linear(c, nbins, base):
        return base + (c[..., 0] * nbins[..., 1] + c[..., 1]) * nbins[..., 2] + c[..., 2]

    atom_bin = linear(coord, atom_nb, per_structure(bin_base, batch))
    order = torch.argsort(atom_bin, stable=True)
    bin_count = torch.bincount(atom_bin, minlength=total_bins)
    bin_start = torch.cumsum(bin_count, 0) - bin_count

    # Half of the bin offsets: the own bin (pairs j > i) and the lexicographically positive ones.
    k = reach.max(axis=0)
    offsets = [o for o in itertools.product(*(range(-kk, kk + 1) for kk in k)) if o >= (0, 0, 0)]
    offsets_t = torch.as_tensor(offsets, dtype=torch.long, device=device).reshape(-1, 3)
    n_off = offsets_t.shape[0]

    # Per (bin, offset) table: the neighbouring bin, its lattice image, where its atoms start, how
    # many there are. Built once per bin rather than per atom (a bin holds several atoms).
    bin_ids = torch.arange(total_bins, device=device)
    bin_graph = torch.searchsorted(bin_base, bin_ids, right=True) - 1
    local = bin_ids - per_structure(bin_base, bin_graph)
    g_nb = per_structure(n_bins_t, bin_graph)  # [T, 3]
    bin_coord = torch.stack([local // (g_nb[:, 1] * g_nb[:, 2]), (local // g_nb[:, 2]) % g_nb[:, 1],
                             local % g_nb[:, 2]], dim=1)
    target = bin_coord[:, None, :] + offsets_t[None]  # [T, M, 3]
    nbins = g_nb[:, None, :]
    bin_pbc = per_structure(pbc_t, bin_graph)[:, None, :]
    image = torch.where(bin_pbc, torch.floor(target.to(f64) / nbins).long(), torch.zeros_like(target))
    wrapped = target - image * nbins
    reach_t = per_structure(torch.as_tensor(reach, device=device), bin_graph)[:, None, :]
    ok = torch.where(bin_pbc, offsets_t[None].abs() <= reach_t,
                     (target >= 0) & (target < nbins)).all(-1)
    nbin = linear(wrapped.clamp(min=0), nbins, per_structure(bin_base, bin_graph)[:, None])
    nbin = torch.where(ok, nbin, torch.zeros_like(nbin))
    tab_first = bin_start[nbin]
    tab_count = torch.where(ok, bin_count[nbin], torch.zeros_like(nbin))
    tab_shift = torch.einsum("tmk,tkl->tml", image.to(f64), per_structure(cell_t, bin_graph))
    own = int(offsets.index((0, 0, 0)))

    # Everything below in sorted order ("s" = position in the sorted array).
    s_pos = pos_wrapped[order]
    s_bin = atom_bin[order]
    s_cols = s_pos.T.contiguous()  # torch gathers 1-D tensors much faster than [C, 3] rows
    shift_cols = tab_shift.reshape(-1, 3).T.contiguous()  # lattice image of each table row, Å
    # float32 copies for the candidate screen, relative to the centre of the coordinates so that
    # rounding depends on the system's size, not on where it sits; ``margin`` bounds that rounding.
    # Pairs the screen finds clearly inside the cutoff are kept; the thin band around it is checked
    # exactly in float64.
    origin32 = s_cols.mean(dim=1, keepdim=True)
    s_cols32 = (s_cols - origin32).to(torch.float32)
    max_width = int(bin_count.max())  # no run of candidates is longer than the fullest bin
    padded32 = torch.cat([s_cols32, s_cols32.new_zeros(3, max_width)], dim=1)
    shift_cols32 = shift_cols.to(torch.float32)
    extent = float(s_cols32.abs().max()) + float(shift_cols.abs().max()) + cutoff
    margin = 1e-5 + 1e-6 * extent
    screen_sq, sure_sq, cutoff_sq = (cutoff + margin) ** 2, max(cutoff - margin, 0.0) ** 2, cutoff**2
    # In orthogonal frames the distance from an atom to a neighbouring bin is known exactly, so
    # (atom, bin) combinations that cannot hold a neighbour are skipped (about a third of them).
    prune = bool(orthogonal.any())
    if prune:
        s_in_bin = in_bin[order].to(torch.float32)
        thick_t = torch.as_tensor(np.where(orthogonal[:, None], thickness, 0.0),
                                  dtype=torch.float32, device=device)
        s_thick = per_structure(thick_t, batch[order])
    # Shifts travel as one packed int64 per pair (see _pack): image of the bin + wrap of i - wrap of j.
    periodic = bool(pbc_np.any())
    if periodic:
        image_flat = image.reshape(-1, 3)
        largest_wrap = int(wrap.abs().max())
        packed_wrap = largest_wrap < _PACK_LIMIT and int(image_flat.abs().max()) < _PACK_LIMIT
        image_code = _pack(image_flat + _FIELD_BIAS)
        s_wrap_code = _pack(wrap[order]) if packed_wrap and largest_wrap else None

    i_parts, j_parts, code_parts = [], [], []
    chunk = max(1, _MAX_CANDIDATES_PER_CHUNK // max(1, n_off * 4))
    for start in range(0, n_atoms, chunk):
        stop = min(n_atoms, start + chunk)
        t = s_bin[start:stop]
        first = tab_first.index_select(0, t)  # [n, M]
        count = tab_count.index_select(0, t)
        # own bin: only the atoms after this one (j > i); the other half is the mirror image
        after = torch.arange(start + 1, stop + 1, device=device)
        first[:, own] = after
        count[:, own] = bin_start[t] + bin_count[t] - after
        if prune:
            gap_sq = _bin_gap_sq(s_in_bin[start:stop], s_thick[start:stop], offsets_t)
            count.masked_fill_(gap_sq >= screen_sq, 0)

        # One row per (atom, neighbouring bin) that can hold candidates.
        rows = count.nonzero()
        if rows.shape[0] == 0:
            continue
        off = rows[:, 1]
        flat = rows[:, 0] * n_off + off
        atom = rows[:, 0] + start  # sorted index of atom i
        cnt = count.view(-1).index_select(0, flat)
        starts = first.view(-1).index_select(0, flat)
        table_row = s_bin.index_select(0, atom) * n_off + off  # row of the (bin, offset) tables
        width, n_cand = int(cnt.max()), int(cnt.sum())
        if rows.shape[0] * width <= _MAX_PADDING * n_cand:
            row, sj = _screen_windows(padded32, s_cols, shift_cols32, shift_cols, atom, table_row,
                                      starts, cnt, width, screen_sq, sure_sq, cutoff_sq)
        else:
            row, sj = _screen_flat(s_cols, shift_cols, atom, table_row, starts, cnt, n_cand,
                                   cutoff_sq)
        i_parts.append(order.index_select(0, atom).index_select(0, row))
        j_parts.append(order.index_select(0, sj))
        if periodic:
            code_row = image_code.index_select(0, table_row)
            if s_wrap_code is not None:
                code_row += s_wrap_code.index_select(0, atom)
            code = code_row.index_select(0, row)
            code_parts.append(code if s_wrap_code is None else code - s_wrap_code.index_select(0, sj))

    # Mirror the half list into the full one, written straight into the outputs.
    n_half = sum(p.numel() for p in i_parts)
    i_full = torch.empty(2 * n_half, dtype=torch.long, device=device)
    j_full = torch.empty_like(i_full)
    if n_half:
        torch.cat(i_parts, out=i_full[:n_half])
        torch.cat(j_parts, out=i_full[n_half:])
        j_full[:n_half].copy_(i_full[n_half:])
        j_full[n_half:].copy_(i_full[:n_half])
    if not periodic:
        return i_full, j_full, torch.zeros(2 * n_half, 3, dtype=torch.long, device=device)
    shifts = torch.empty(2 * n_half, 3, dtype=torch.long, device=device)
    if n_half:
        offset = 0
        for code in code_parts:
            _unpack(code, out=shifts[offset:offset + code.numel()])
            offset += code.numel()
        if not packed_wrap:
            shifts[:n_half] += wrap.index_select(0, i_full[:n_half]) - wrap.index_select(
                0, j_full[:n_half])
        torch.neg(shifts[:n_half], out=shifts[n_half:])
    return i_full, j_full, shifts


def _bin_gap_sq(in_bin: torch.Tensor, thickness: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
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


def _screen_windows(padded32, s_cols, shift_cols32, shift_cols, atom, table_row, starts, cnt,
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
        exact = _exact_dist_sq(s_cols, shift_cols, atom.index_select(0, rb),
                               table_row.index_select(0, rb), sj.index_select(0, band))
        outside = band[exact >= cutoff_sq]
        if outside.numel():
            row, sj = _drop(outside, row, sj)
    return row, sj


def _drop(drop: torch.Tensor, *columns: torch.Tensor):
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


def _exact_dist_sq(s_cols, shift_cols, i, table_row, j) -> torch.Tensor:
    """float64 squared distances of pairs (sorted indices i, j; image from ``table_row``)."""
    dist_sq = None
    for d in range(3):
        base = s_cols[d].index_select(0, i) - shift_cols[d].index_select(0, table_row)
        diff = s_cols[d].index_select(0, j) - base
        dist_sq = diff * diff if dist_sq is None else dist_sq.addcmul_(diff, diff)
    return dist_sq


def _screen_flat(s_cols, shift_cols, atom, table_row, starts, cnt, n_cand: int, cutoff_sq: float):
    """Like :func:`_screen_windows` for very uneven bins: one flat run of candidates, no padding."""
    rep = torch.repeat_interleave(torch.arange(cnt.numel(), device=cnt.device), cnt,
                                  output_size=n_cand)
    # j = first + local index = arange + (first - exclusive cumsum of counts): one gather
    jump = starts - (torch.cumsum(cnt, 0) - cnt)
    sj = torch.arange(n_cand, device=cnt.device) + jump.index_select(0, rep)
    dist_sq = _exact_dist_sq(s_cols, shift_cols, atom.index_select(0, rep),
                             table_row.index_select(0, rep), sj)
    close = (dist_sq < cutoff_sq).nonzero().flatten()
    return rep.index_select(0, close), sj.index_select(0, close)


def image_offsets(shifts: torch.Tensor, cell: torch.Tensor,
                  pair_structure: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cartesian image offsets ``shifts @ cell`` of pairs, [E, 3] in ``cell``'s dtype.

    ``cell`` is one cell [3, 3] (or [1, 3, 3]), or one per structure [B, 3, 3] with ``pair_structure``
    [E] the structure of each pair. One structure is one matmul, with no per-pair copy of the cell.
    Differentiable in ``cell``.
    """
    shifts = shifts.to(cell.dtype)
    if cell.ndim == 2 or cell.shape[0] == 1:
        return shifts @ cell.reshape(3, 3)
    return torch.einsum("ek,ekl->el", shifts, cell.index_select(0, pair_structure))


def neighbor_list(positions, cutoff: float, cell=None, pbc=None) -> Pairs:
    """Neighbour list of one structure; see :func:`batched_neighbor_list` for the conventions.

    ``cell`` is [3, 3] (rows are lattice vectors, Å) or ``None`` for an isolated structure; ``pbc`` is a
    bool or three of them (default: no periodicity).
    """
    positions = _as_positions(positions)
    if cell is not None and torch.as_tensor(cell).shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {tuple(torch.as_tensor(cell).shape)}")
    if pbc is not None:
        pbc = np.asarray(pbc.cpu() if isinstance(pbc, torch.Tensor) else pbc)
        if pbc.shape not in ((), (1,), (3,)):
            raise ValueError(f"pbc must be a bool or three of them, got shape {pbc.shape}")
        pbc = np.broadcast_to(pbc.reshape(-1), (3,))
    return batched_neighbor_list(positions, cutoff, None, cell, pbc)


def cluster_available() -> bool:
    """Whether the optional ``torch-cluster`` package (``pip install "ase_eqgnn[cluster]"``) imports."""
    try:
        import torch_cluster  # noqa: F401
    except ImportError:
        return False
    return True


def cluster_neighbor_list(positions: torch.Tensor, cutoff: float,
                          batch: Optional[torch.Tensor] = None) -> Pairs:
    """Non-periodic neighbour list of a batch of structures by torch-cluster's ``radius_graph``.

    ``radius_graph`` silently drops neighbours beyond ``max_num_neighbors`` (32 by default); it is
    called with the size of the largest structure, so nothing can be dropped, and the result is
    checked against that bound. Shifts are all zero. Same conventions as :func:`batched_neighbor_list`.
    """
    from torch_cluster import radius_graph

    cutoff = _check_cutoff(cutoff)
    positions = _as_positions(positions)
    n_atoms = positions.shape[0]
    if batch is None:
        batch = torch.zeros(n_atoms, dtype=torch.long, device=positions.device)
    largest = int(torch.bincount(batch).max()) if n_atoms else 0
    if largest < 2:
        empty = torch.zeros(0, dtype=torch.long, device=positions.device)
        return empty, empty, torch.zeros(0, 3, dtype=torch.long, device=positions.device)
    edges = radius_graph(positions.detach(), r=cutoff, batch=batch, loop=False,
                         max_num_neighbors=largest, flow="source_to_target")
    j, i = edges[0], edges[1]  # flow source_to_target: edges[1] is the centre atom
    if int(torch.bincount(i, minlength=n_atoms).max()) >= largest:
        raise RuntimeError("torch-cluster returned a truncated neighbour list")
    # radius_graph compares r <= cutoff; keep the strict convention of the other backends
    keep = (positions[j] - positions[i]).detach().square().sum(-1) < cutoff * cutoff
    i, j = i[keep], j[keep]
    return i, j, torch.zeros(i.shape[0], 3, dtype=torch.long, device=positions.device)


def vesin_available() -> bool:
    """Whether the optional ``vesin-torch`` package (a fast C++ neighbour list) can be imported."""
    try:
        import vesin_torch  # noqa: F401
    except ImportError:
        return False
    return True


def vesin_neighbor_list(positions, cutoff: float, cell=None, pbc=None) -> Pairs:
    """:func:`neighbor_list` computed by vesin-torch (single structures only; same conventions)."""
    from vesin_torch import NeighborList

    cutoff = _check_cutoff(cutoff)
    positions = _as_positions(positions)
    cell_np, pbc_np = _as_cells(cell, pbc, 1, positions.device)
    if pbc_np[0].any():
        _binning_frame(cell_np[0], pbc_np[0])  # same singular-cell error as ours
    box = torch.as_tensor(cell_np[0], dtype=positions.dtype, device=positions.device)
    periodic = torch.as_tensor(pbc_np[0], device=positions.device)
    i, j, shifts = NeighborList(cutoff=cutoff, full_list=True).compute(
        positions.detach(), box, periodic, quantities="ijS")
    return i.long(), j.long(), shifts.long()


# ------------------------------------------------------------------------------------------------
# Verlet skin
# ------------------------------------------------------------------------------------------------
class VerletList:
    """A neighbour list reused across MD steps with a Verlet skin.

    The list is built with ``cutoff + skin`` and kept while no atom moved more than ``skin / 2`` since
    the build and the cell, pbc, atom count, atomic numbers and batch are unchanged (every element is
    compared). Each call returns only the pairs within the true ``cutoff``, from the current positions.

    >>> import torch
    >>> nl = VerletList(cutoff=3.0, skin=0.5)
    >>> pos = torch.rand(20, 3, dtype=torch.float64) * 6
    >>> i, j, S = nl(pos)
    >>> _ = nl(pos + 0.1)  # moved 0.1*sqrt(3) < 0.25 Å: no rebuild
    >>> nl.builds
    1
    """

    def __init__(self, cutoff: float, skin: float = 0.5, backend: str = "torch"):
        """``backend``: "torch" (this module's cell list), "vesin" (vesin-torch, single structures)
        or "auto" (vesin for single structures when it is installed, else torch)."""
        self.cutoff = _check_cutoff(cutoff)
        if backend not in ("torch", "vesin", "auto"):
            raise ValueError(f"backend must be 'torch', 'vesin' or 'auto', got {backend!r}")
        if backend == "vesin" and not vesin_available():
            raise ValueError("backend='vesin' needs the vesin-torch package: pip install vesin-torch")
        self.backend = backend
        skin = float(skin)
        if not math.isfinite(skin) or skin < 0:
            raise ValueError(f"skin must be a finite non-negative number of Å, got {skin}")
        self.skin = skin
        self.builds = 0
        self._ref = None  # (positions, cell, pbc, numbers, batch) at the last build
        self._pairs = None
        self._offsets = None  # the stored pairs' S @ cell (fixed until a rebuild), in one dtype

    def reset(self) -> None:
        """Forget the stored list; the next call rebuilds."""
        self._ref = None
        self._pairs = None
        self._offsets = None

    def _needs_rebuild(self, positions, cell, pbc, numbers, batch) -> bool:
        if self._ref is None:
            return True
        r_pos, r_cell, r_pbc, r_numbers, r_batch = self._ref
        if positions.shape != r_pos.shape or positions.device != r_pos.device:
            return True
        for new, old in ((cell, r_cell), (pbc, r_pbc), (numbers, r_numbers), (batch, r_batch)):
            if (new is None) != (old is None):
                return True
            if new is not None and (new.shape != old.shape or not torch.equal(new, old)):
                return True
        if positions.shape[0] == 0 or self.skin == 0:
            return self.skin == 0
        moved = (positions.detach() - r_pos).square().sum(-1).max()
        return bool(moved > (0.5 * self.skin) ** 2)

    def __call__(self, positions: torch.Tensor, cell=None, pbc=None, numbers=None,
                 batch=None, prune: bool = True) -> Pairs:
        """Pairs within ``cutoff`` for ``positions`` [N, 3] (``cell``/``pbc``/``batch`` as in
        :func:`batched_neighbor_list`; ``numbers`` only participates in the change test).

        ``prune=False`` returns the stored list itself: every pair within ``cutoff + skin`` at the
        last build, a superset of the pairs within ``cutoff`` now, and the same tensors until the
        next rebuild (for a model whose cutoff envelope zeroes the extra pairs, as a CUDA graph
        needs fixed shapes)."""
        positions = _as_positions(positions)
        dev = positions.device
        # Compared as given; copied only when stored at a rebuild (the caller may reuse its arrays).
        cell_t = None if cell is None else torch.as_tensor(cell, device=dev).detach()
        pbc_t = None if pbc is None else torch.as_tensor(np.asarray(pbc.cpu()) if isinstance(
            pbc, torch.Tensor) else np.asarray(pbc), device=dev)
        numbers_t = None if numbers is None else torch.as_tensor(numbers, device=dev)
        batch_t = None if batch is None else torch.as_tensor(batch, device=dev)
        if self._needs_rebuild(positions, cell_t, pbc_t, numbers_t, batch_t):
            cell_t, pbc_t, numbers_t, batch_t = (None if t is None else t.clone()
                                                 for t in (cell_t, pbc_t, numbers_t, batch_t))
            single = batch_t is None and (cell_t is None or cell_t.ndim == 2)
            use_vesin = single and (self.backend == "vesin" or (
                self.backend == "auto" and vesin_available()))
            if use_vesin:
                i, j, s = vesin_neighbor_list(positions, self.cutoff + self.skin, cell_t, pbc_t)
            elif single:
                i, j, s = neighbor_list(positions, self.cutoff + self.skin, cell_t, pbc_t)
            else:
                i, j, s = batched_neighbor_list(positions, self.cutoff + self.skin, batch_t, cell_t,
                                                pbc_t)
            self._pairs, self._offsets = (i, j, s), None
            self._ref = (positions.detach().clone(), cell_t, pbc_t, numbers_t, batch_t)
            # Without a periodic direction every shift is zero: the filter below can skip them.
            self._periodic = cell_t is not None and pbc_t is not None and bool(pbc_t.any())
            self.builds += 1
        return self._prune(positions) if prune else self._pairs

    def within_cutoff(self, positions: torch.Tensor) -> Pairs:
        """The pairs of the stored list that are within ``cutoff`` at ``positions`` (no rebuild
        check: call the list first)."""
        return self._prune(_as_positions(positions))

    def _prune(self, positions: torch.Tensor) -> Pairs:
        """:meth:`within_cutoff` for positions already checked by :func:`_as_positions`."""
        i, j, s = self._pairs
        if i.numel() == 0:
            return i, j, s
        pos = positions.detach()
        vec = pos.index_select(0, j) - pos.index_select(0, i)
        if self._periodic:
            if self._offsets is None or self._offsets.dtype != pos.dtype:  # once per build
                _, cell, _, _, batch = self._ref
                self._offsets = image_offsets(s, cell.to(pos.dtype),
                                              None if batch is None else batch.index_select(0, i))
            vec = vec + self._offsets
        keep = ((vec * vec).sum(-1) < self.cutoff * self.cutoff).nonzero().squeeze(1)
        return i.index_select(0, keep), j.index_select(0, keep), s.index_select(0, keep)
