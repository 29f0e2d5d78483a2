"""Checks of the inputs every neighbour list takes: cutoff, skin, positions, cells and pbc.

One place for them, so that the cell list, the Verlet list, the backends and the calculator refuse
the same inputs with the same one-line ``ValueError``: non-finite or negative lengths, positions or
cells with NaN/inf, and coordinates beyond :data:`MAX_COORDINATE` (there float64 no longer resolves
an interatomic distance, and lattice images no longer fit an integer).

>>> check_length(0.5, "skin")
0.5
>>> check_length(float("nan"), "skin")
Traceback (most recent call last):
...
ValueError: skin must be a finite non-negative number of Å, got nan
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

#: Largest accepted |coordinate| of a position or a periodic lattice vector, Å. float64 resolves
#: 2e-6 Å at 1e10 Å; beyond, distances and integer lattice images stop being exact.
MAX_COORDINATE = 1e10

def check_length(value, name: str) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and >= 0 (Å)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of Å, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of Å, got {value!r}") from None
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite non-negative number of Å, got {value}")
    return value


def check_cutoff(cutoff: float) -> float:
    """The cutoff as a float, or a ValueError unless it is finite and positive (Å)."""
    if isinstance(cutoff, bool):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}")
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not math.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"cutoff must be a finite positive number of Å, got {cutoff}")
    return cutoff


def as_positions(positions) -> torch.Tensor:
    """Positions as a floating-point [N, 3] tensor (integers become float64), finite and within
    :data:`MAX_COORDINATE`; anything else is a ValueError."""
    positions = torch.as_tensor(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {tuple(positions.shape)}")
    if not positions.is_floating_point():
        positions = positions.to(torch.float64)
    if positions.numel() and not bool(torch.isfinite(positions).all()):
        bad = (~torch.isfinite(positions)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad}...)")
    if positions.numel():
        largest = float(positions.detach().abs().max())
        if largest > MAX_COORDINATE:
            atom = int(positions.detach().abs().amax(dim=1).argmax())
            raise ValueError(f"atom {atom} lies {largest:.3g} Å from the origin, beyond the "
                             f"{MAX_COORDINATE:.0e} Å where distances can be resolved; bring the "
                             "atoms closer to the origin")
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
    periodic_rows = np.abs(cell_np).max(axis=2)[pbc_np] if pbc_np.any() else np.zeros(0)
    if periodic_rows.size and periodic_rows.max() > MAX_COORDINATE:
        raise ValueError(f"a periodic lattice vector is {periodic_rows.max():.3g} Å long, beyond the "
                         f"{MAX_COORDINATE:.0e} Å this package resolves; set pbc=False along it")
    return np.array(cell_np), np.array(pbc_np)
