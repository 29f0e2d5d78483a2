"""Checks of the inputs every neighbour list takes: cutoff, positions, cells and pbc.

One place for them, so that the cell list, the Verlet list and the backends refuse the same inputs
with the same one-line ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

def check_cutoff(cutoff: float) -> float:
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not math.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"cutoff must be a finite positive number of Å, got {cutoff}")
    return cutoff


def as_positions(positions) -> torch.Tensor:
    positions = torch.as_tensor(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {tuple(positions.shape)}")
    if not positions.is_floating_point():
        positions = positions.to(torch.float64)
    if positions.numel() and not bool(torch.isfinite(positions).all()):
        bad = (~torch.isfinite(positions)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad}...)")
    return positions


def as_cells(cell, pbc, n_graphs: int, device) -> Tuple[np.ndarray, np.ndarray]:
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
