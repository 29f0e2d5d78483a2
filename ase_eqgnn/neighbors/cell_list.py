"""The O(N) cell list in torch: any cell and pbc, many structures at once, CPU and CUDA.

How it works
------------
Positions are expressed in the lattice frame (:func:`~ase_eqgnn.neighbors.frame.lattice_frame`).
Periodic fractional coordinates are wrapped into [0, 1) (the integer wrap is remembered and folded
into the returned shifts). Each direction is cut into bins whose thickness (distance between bin
faces) is at least ``cutoff / subdivisions``, so two atoms closer than the cutoff sit at most
``k = subdivisions`` bins apart along each direction (more, when the cell is thinner than the cutoff:
then the same bin is visited through several lattice images). Only half of the bin offsets are
visited (lexicographically positive ones plus the own bin with ``j > i``); the other half is the
mirror image. Candidates are screened in rows, one per (atom, neighbouring bin), padded to the fullest
bin: the sorted positions of a bin are contiguous, so a row is a window of them and atom i's
coordinates broadcast along it (very uneven bins fall back to one flat run of candidates). The screen
runs in float32 and keeps the pairs clearly inside the cutoff; only the thin band within float32
round-off of the cutoff is checked again in float64, so the list is exact
(:mod:`~ase_eqgnn.neighbors.screening`). Shifts travel as one packed int64 per pair until the
output is written. Work and memory are O(N) for a fixed density.

Example
-------
Two structures in one call, a periodic crystal and a molecule (a training batch):

>>> import torch
>>> from ase.build import bulk, molecule
>>> cu, water = bulk("Cu", "fcc", a=3.6), molecule("H2O")
>>> positions = torch.tensor([*cu.positions, *water.positions])
>>> batch = torch.tensor([0] + [1] * len(water))
>>> cell = torch.stack([torch.tensor(cu.cell[:]), torch.zeros(3, 3, dtype=torch.float64)])
>>> pbc = torch.tensor([[True] * 3, [False] * 3])
>>> i, j, S = batched_neighbor_list(positions, 3.0, batch, cell, pbc)
>>> int((batch[i] == 0).sum()), int((batch[i] == 1).sum())   # 12 images of Cu; 3 x 2 in water
(12, 6)
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import numpy as np
import torch

from .backends import cluster_available, cluster_neighbor_list
from .frame import lattice_frames
from .inputs import as_cells, as_positions, check_cutoff
from .screening import (FIELD_BIAS, PACK_LIMIT, bin_gap_sq, pack, screen_flat, screen_windows,
                        unpack)

Pairs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Candidate pairs per chunk: bounds peak memory (~100 bytes per candidate) for very large systems.
_MAX_CANDIDATES_PER_CHUNK = 4_000_000
# Refused as far denser than matter (overlapping atoms, a periodic cell far smaller than its
# contents): dense solids hold ~100 neighbours per atom within 6 Å, ~4,000 within 15 Å.
_MAX_NEIGHBOURS_PER_ATOM = 20_000
# Bin offsets (lattice images of the bin grid) visited per bin: a cell ~30x thinner than the cutoff
# along all three periodic directions. Beyond it the tables alone would fill the memory.
_MAX_BIN_OFFSETS = 250_000
# Padded candidate rows are used while they hold at most this many slots per real candidate.
_MAX_PADDING = 2.5


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
    cutoff = check_cutoff(cutoff)
    positions = as_positions(positions)
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
    cell_np, pbc_np = as_cells(cell, pbc, n_graphs, device)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n_atoms == 0:
        return empty, empty, torch.zeros(0, 3, dtype=torch.long, device=device)

    if use_cluster and not pbc_np.any() and device.type == "cuda" and cluster_available():
        return cluster_neighbor_list(positions, cutoff, batch)

    frames = lattice_frames(cell_np, pbc_np)
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
        # Sparse systems: never more bins than ~2 per atom (the cost would be in empty bins). The
        # direction with the most bins is coarsened first, so that a cluster with one far-away atom
        # keeps its bins across the cluster (coarsening all three would put it in one bin).
        limit = max(2 * int(counts_per_graph[b]), 8)
        while np.prod(nb.astype(np.float64)) > limit:  # float: the product of three may overflow
            widest = int(np.argmax(nb))
            nb[widest] = max(1, nb[widest] // 2)
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
    if np.prod(2.0 * k + 1) / 2 > _MAX_BIN_OFFSETS:
        b = int(np.argmax(reach.max(axis=1)))
        d = int(np.argmax(reach[b]))
        raise ValueError(
            f"structure {b} is {thickness[b, d]:.3g} Å thick along its periodic direction "
            f"{'xyz'[d]}, {cutoff / thickness[b, d]:.3g} times thinner than the cutoff {cutoff} Å: "
            "each atom would meet its own images hundreds of times; give the real cell (or a "
            "reduced one: ase.geometry.minkowski_reduce)")
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
    # Shifts travel as one packed int64 per pair (see screening.pack): image of the bin + wrap of i - wrap of j.
    periodic = bool(pbc_np.any())
    if periodic:
        image_flat = image.reshape(-1, 3)
        largest_wrap = int(wrap.abs().max())
        packed_wrap = largest_wrap < PACK_LIMIT and int(image_flat.abs().max()) < PACK_LIMIT
        image_code = pack(image_flat + FIELD_BIAS)
        s_wrap_code = pack(wrap[order]) if packed_wrap and largest_wrap else None

    i_parts, j_parts, code_parts = [], [], []
    n_pairs, most_pairs = 0, _MAX_NEIGHBOURS_PER_ATOM * n_atoms // 2  # half list
    chunks, candidates = _chunks(tab_count, s_bin, n_off)
    total_candidates = float(candidates[n_atoms])
    for start, stop in chunks:
        t = s_bin[start:stop]
        first = tab_first.index_select(0, t)  # [n, M]
        count = tab_count.index_select(0, t)
        # own bin: only the atoms after this one (j > i); the other half is the mirror image
        after = torch.arange(start + 1, stop + 1, device=device)
        first[:, own] = after
        count[:, own] = bin_start[t] + bin_count[t] - after
        if prune:
            gap_sq = bin_gap_sq(s_in_bin[start:stop], s_thick[start:stop], offsets_t)
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
            row, sj = screen_windows(padded32, s_cols, shift_cols32, shift_cols, atom, table_row,
                                      starts, cnt, width, screen_sq, sure_sq, cutoff_sq)
        else:
            row, sj = screen_flat(s_cols, shift_cols, atom, table_row, starts, cnt, n_cand,
                                   cutoff_sq)
        # Too dense: more pairs than the bound, or on course for twice the bound (the pairs found
        # per candidate screened so far, times all candidates; a full chunk screened first).
        n_pairs += row.numel()
        screened = float(candidates[stop])
        on_course = screened >= min(total_candidates, _MAX_CANDIDATES_PER_CHUNK) and \
            n_pairs / screened * total_candidates > 2 * most_pairs
        if n_pairs > most_pairs or on_course:
            raise ValueError(
                f"more than {_MAX_NEIGHBOURS_PER_ATOM:,} neighbours per atom within the cutoff "
                f"{cutoff} Å: far denser than any material (overlapping atoms, or a periodic cell "
                "much smaller than its contents?); check the structure")
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
            unpack(code, out=shifts[offset:offset + code.numel()])
            offset += code.numel()
        if not packed_wrap:
            shifts[:n_half] += wrap.index_select(0, i_full[:n_half]) - wrap.index_select(
                0, j_full[:n_half])
        torch.neg(shifts[:n_half], out=shifts[n_half:])
    return i_full, j_full, shifts


def _chunks(tab_count: torch.Tensor, s_bin: torch.Tensor, n_off: int):
    """``(start, stop)`` runs of sorted atoms with about ``_MAX_CANDIDATES_PER_CHUNK`` candidates
    each (an atom's candidates: the atoms of its neighbouring bins; its rows: one per bin offset,
    counted as 4 candidates), so that dense bins do not multiply the memory of one chunk; and
    ``{stop: candidates of the atoms before stop}`` (an upper bound: the own bin counts whole)."""
    n_atoms = s_bin.shape[0]
    per_atom = tab_count.sum(1).index_select(0, s_bin)
    weight = per_atom.clamp(min=4 * n_off)
    total = int(weight.sum())
    if total <= _MAX_CANDIDATES_PER_CHUNK:
        return [(0, n_atoms)], {n_atoms: int(per_atom.sum())}
    cumulative = torch.cumsum(weight, 0)
    marks = torch.arange(1, total // _MAX_CANDIDATES_PER_CHUNK + 1, device=s_bin.device)
    ends = torch.searchsorted(cumulative, marks * _MAX_CANDIDATES_PER_CHUNK, right=True).tolist()
    bounds = sorted(set([0] + [min(max(e, 1), n_atoms) for e in ends] + [n_atoms]))
    stops = torch.as_tensor(bounds[1:], device=s_bin.device)
    before = torch.cumsum(per_atom, 0).index_select(0, stops - 1).tolist()
    return list(zip(bounds[:-1], bounds[1:])), dict(zip(bounds[1:], before))


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
    positions = as_positions(positions)
    if cell is not None and torch.as_tensor(cell).shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {tuple(torch.as_tensor(cell).shape)}")
    if pbc is not None:
        pbc = np.asarray(pbc.cpu() if isinstance(pbc, torch.Tensor) else pbc)
        if pbc.shape not in ((), (1,), (3,)):
            raise ValueError(f"pbc must be a bool or three of them, got shape {pbc.shape}")
        pbc = np.broadcast_to(pbc.reshape(-1), (3,))
    return batched_neighbor_list(positions, cutoff, None, cell, pbc)
