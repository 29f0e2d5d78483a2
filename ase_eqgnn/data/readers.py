"""Dataset readers: every supported file becomes a list of :class:`Frame` in eV, Å.

Formats (picked from the extension, or forced with ``format=``):

- ``"npz"``: NumPy archives in one of three layouts (``pos``, ``sgdml``/MD17, ``rmd17``), detected
  from the keys; the keys and native units of each are tabled in :mod:`ase_eqgnn.data.npz`.
- ``"mdtraj"``: any trajectory mdtraj reads (``.h5 .dcd .xtc .trr .nc .pdb .gro`` ...; pass
  ``topology=`` where the format has none). Positions come from the trajectory (mdtraj's nm -> Å);
  per-frame energies/forces from ``energies=`` (an ``.npz`` in the ``pos`` layout, ``pos`` optional
  there but checked against the trajectory when present). Without ``energies=`` the frames carry
  positions only.
- anything else goes to ``ase.io.read`` (extxyz, ``.traj``, ``.db``, ...); energies, forces and stress
  come from the attached calculator results, which ASE gives in eV, eV/Å, eV/Å^3.

``energy_unit`` / ``length_unit`` name the units *in the file* when they differ from the native ones
above (``None`` = native); values are converted to eV and Å. Forces are converted with
energy/length, stress with energy/length^3.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from .ase_formats import read_ase
from .checks import Index, PathLike
from .frame import Frame, frames_to_atoms
from .npz import read_npz
from .trajectories import MDTRAJ_EXTENSIONS, read_mdtraj

__all__ = ["Frame", "read_dataset", "split_dataset", "frames_to_atoms", "MDTRAJ_EXTENSIONS"]


def read_dataset(
    path: PathLike,
    format: str | None = None,
    *,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    energies: PathLike | None = None,
    topology: PathLike | None = None,
    index: Index = ":",
) -> list[Frame]:
    """Read labelled frames from ``path`` and return them in eV / Å.

    Args:
        path: data file.
        format: ``"npz"``, ``"mdtraj"`` or an ``ase.io`` format name; ``None`` picks by extension
            (``.npz`` -> npz, trajectory extensions in ``MDTRAJ_EXTENSIONS`` or ``energies=`` given ->
            mdtraj, anything else -> ``ase.io.read``).
        energy_unit: unit of energies in the file (``"eV"``, ``"kcal/mol"``, ``"kJ/mol"``, ``"Ha"``,
            ...); ``None`` = the layout's native unit (kcal/mol for ``R, z, E, F`` npz, else eV).
            Forces are taken to be in energy_unit/length_unit.
        length_unit: unit of positions/cell in the file (``"Å"``, ``"nm"``, ``"Bohr"``); ``None`` = Å.
            Not allowed for mdtraj trajectories, whose units mdtraj already handles.
        energies: for trajectories, an ``.npz`` with ``energy`` (frames,) and ``forces``
            (frames, atoms, 3) in eV and eV/Å (or ``energy_unit``).
        topology: topology file for mdtraj formats without one (DCD, XTC, ...).
        index: frames to keep, ASE style: int, slice, or a string such as ``":"``, ``"-1"``, ``"::10"``.

    Raises:
        ValueError: unknown format or unit, missing field, inconsistent shapes, non-finite values
            (the message names the file and the field).
        FileNotFoundError: ``path``, ``energies`` or ``topology`` does not exist.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    fmt = _resolve_format(path, format, energies)
    if fmt == "npz":
        if energies is not None or topology is not None:
            raise ValueError(f"{path}: energies= and topology= only apply to mdtraj trajectories")
        frames = read_npz(path, energy_unit, length_unit, index)
    elif fmt == "mdtraj":
        if length_unit is not None:
            raise ValueError(f"{path}: length_unit does not apply to mdtraj trajectories "
                             "(mdtraj converts the file's units itself)")
        frames = read_mdtraj(path, energies, topology, energy_unit, index)
    else:
        if energies is not None or topology is not None:
            raise ValueError(f"{path}: energies= and topology= only apply to mdtraj trajectories; "
                             f"got format {fmt!r}")
        frames = read_ase(path, fmt, energy_unit, length_unit, index)
    if not frames:
        raise ValueError(f"{path}: no frames selected (index={index!r})")
    return frames


def _resolve_format(path: pathlib.Path, format: str | None, energies: PathLike | None) -> str | None:
    """'npz', 'mdtraj', or an ase format name / None (= let ASE guess)."""
    if format is not None:
        fmt = format.lower()
        if fmt in ("npz", "mdtraj"):
            return fmt
        return format
    suffixes = "".join(path.suffixes[-2:]).lower()
    ext = path.suffix.lower()
    if ext == ".npz":
        return "npz"
    if energies is not None or ext in MDTRAJ_EXTENSIONS or suffixes in MDTRAJ_EXTENSIONS:
        return "mdtraj"
    return None


def split_dataset(frames: Sequence[Frame], valid_fraction: float, seed: int = 0,
                  contiguous: bool = False) -> tuple[list[Frame], list[Frame]]:
    """Split ``frames`` into (train, valid).

    ``n_valid = round(valid_fraction * len(frames))`` (at least 1 when ``valid_fraction > 0`` and there
    are two or more frames). Random split: a seeded permutation picks the validation frames; both
    parts keep the original order. ``contiguous=True``: the validation set is one contiguous block at
    the end (the usual hold-out for correlated MD frames); ``seed`` is then unused.
    """
    n = len(frames)
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if n == 0:
        raise ValueError("cannot split an empty dataset")
    n_valid = int(round(valid_fraction * n))
    if valid_fraction > 0 and n_valid == 0 and n >= 2:
        n_valid = 1
    n_valid = min(n_valid, n - 1)
    frames = list(frames)
    if contiguous:
        return frames[: n - n_valid], frames[n - n_valid:]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    valid_idx = np.sort(perm[:n_valid])
    train_idx = np.sort(perm[n_valid:])
    return [frames[i] for i in train_idx], [frames[i] for i in valid_idx]
