"""Checks shared by the dataset readers: frame selection, numeric fields, shapes, finite values,
cells. Every failure is a ``ValueError`` that names the file and the field.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Union

import numpy as np

PathLike = Union[str, os.PathLike]
Index = Union[int, slice, str]


def selection(index: Index, n: int, path: pathlib.Path) -> np.ndarray:
    """Indices into ``range(n)`` selected by an ASE-style index."""
    if isinstance(index, str):
        from ase.io.formats import string2index

        try:
            index = string2index(index)
        except ValueError:
            raise ValueError(f"{path}: bad index {index!r}") from None
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -n <= i < n:
            raise ValueError(f"{path}: index {i} out of range for {n} frames")
        return np.array([i % n])
    if isinstance(index, slice):
        return np.arange(n)[index]
    raise ValueError(f"{path}: index must be an int, slice or string, got {type(index).__name__}")


def check_finite(arr: np.ndarray, path: PathLike, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0]
        where = f" (first at frame {first[0]})" if arr.ndim >= 1 and arr.shape[0] > 0 else ""
        raise ValueError(f"{path}: field {name!r} has {int(bad.sum())} non-finite values{where}")


def as_float(arr: Any, path: PathLike, name: str) -> np.ndarray:
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: field {name!r} is not numeric") from None


def energies_1d(e: np.ndarray, n_frames: int, path: PathLike, name: str) -> np.ndarray:
    """(frames,) or (frames, 1) -> (frames,)."""
    if e.ndim == 2 and e.shape[1] == 1:
        e = e[:, 0]
    if e.ndim != 1:
        raise ValueError(f"{path}: field {name!r} must have shape (frames,) or (frames, 1), got {e.shape}")
    if e.shape[0] != n_frames:
        raise ValueError(f"{path}: field {name!r} has {e.shape[0]} frames but the positions have {n_frames}")
    return e


def check_per_atom(arr: np.ndarray, n_frames: int, n_atoms: int, path: PathLike, name: str) -> None:
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{path}: field {name!r} must have shape (frames, atoms, 3), got {arr.shape}")
    if arr.shape[0] != n_frames:
        raise ValueError(f"{path}: field {name!r} has {arr.shape[0]} frames but the positions have {n_frames}")
    if arr.shape[1] != n_atoms:
        raise ValueError(f"{path}: field {name!r} has {arr.shape[1]} atoms but the positions have {n_atoms}")


def check_pbc_cell(cell: np.ndarray, pbc: np.ndarray, path: PathLike, frame: int) -> None:
    for k in range(3):
        if pbc[k] and not np.any(cell[k]):
            raise ValueError(f"{path}: frame {frame} is periodic along axis {k} but its cell vector is zero")
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"{path}: frame {frame} is fully periodic but its cell has zero volume")


def per_frame_cell(cell: np.ndarray | None, n_frames: int, path: PathLike, name: str) -> np.ndarray:
    if cell is None:
        return np.zeros((n_frames, 3, 3))
    cell = as_float(cell, path, name)
    if cell.shape == (3,):
        cell = np.diag(cell)
    if cell.shape == (3, 3):
        return np.broadcast_to(cell, (n_frames, 3, 3))
    if cell.shape == (n_frames, 3, 3):
        return cell
    raise ValueError(f"{path}: field {name!r} must have shape (3, 3) or (frames, 3, 3), got {cell.shape}")
