"""Coarse-grained training data by force matching: all-atom frames -> bead positions and mapped forces.

A :class:`~ase_eqgnn.cg.maps.CGMap` is linear, ``X_I = sum_i c_Ii x_i`` (``C = CGMap.weights()``,
rows sum to one, ``c_Ii = 0`` unless atom ``i`` belongs to bead ``I``). The force on bead ``I`` is
mapped with a second matrix ``D``::

    F_I = sum_i d_Ii f_i,      d_Ii = 1 if atom i belongs to bead I, else 0

i.e. **the force on a bead is the sum of the forces on the atoms it owns**, for every map kind
(anchor atom, centre of mass, centre of geometry). This is the rule of Noid et al. (J. Chem. Phys.
128, 244114, 2008), who show that the mapped force is an unbiased sample of the many-body mean force
``-dW/dX_I`` (the gradient of the CG free-energy surface, the quantity force matching fits) when

    sum_i c_Ii d_Ji = delta_IJ.

It holds here: ``sum_i c_Ii d_Ji = sum_{i in J} c_Ii``, which is 0 for ``I != J`` (``c_Ii`` vanishes
outside bead ``I``, and beads do not share atoms) and ``sum_{i in I} c_Ii = 1`` for ``I = J`` (rows of
``C`` sum to one). :func:`check_consistency` verifies it numerically for any map. Summing the atoms'
forces also keeps the total force: ``sum_I F_I = sum_i f_i`` (zero for an isolated molecule).

Functions:

- :func:`force_map_matrix` (``D``), :func:`check_consistency`;
- :func:`map_forces` (numpy or torch, any leading batch shape);
- :func:`map_frames`: :class:`~ase_eqgnn.data.Frame` list (what ``read_dataset`` returns: positions
  Å, forces eV/Å) -> bead positions and mapped forces as arrays;
- :func:`cg_frames`: the same as bead :class:`Frame` objects (bead-type atomic numbers, no energy),
  which ``ase.io`` writes to extxyz with their forces;
- :class:`CGDataset` with :func:`save_cg_dataset` / :func:`load_cg_dataset`: a compact ``.npz`` of
  bead positions and mapped forces that also records the map, the beads and the temperature.

Example::

    >>> import mdtraj as md
    >>> import numpy as np
    >>> from ase_eqgnn.cg import ala2_five_bead_map
    >>> from ase_eqgnn.data import Frame
    >>> from ase_eqgnn.structures import load_structure, structure_path
    >>> atoms = load_structure("ala2")                 # in practice: read_dataset(your trajectory)
    >>> forces = np.random.default_rng(0).normal(size=(len(atoms), 3))
    >>> frames = [Frame(atoms.positions, atoms.numbers, forces=forces)]
    >>> cg_map = ala2_five_bead_map(md.load(str(structure_path("ala2"))).topology)
    >>> X, F = map_frames(frames, cg_map)              # bead positions (Å), mapped forces (eV/Å)
    >>> X.shape, F.shape
    ((1, 5, 3), (1, 5, 3))
    >>> bool(np.allclose(F.sum(axis=1), forces.sum(axis=0)))   # the total force is kept
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..data import Frame
from .beads import BeadSet
from .maps import CGMap

__all__ = ["force_map_matrix", "check_consistency", "map_forces", "map_frames", "cg_frames", "CGDataset",
           "save_cg_dataset", "load_cg_dataset"]


def force_map_matrix(cg_map: CGMap) -> np.ndarray:
    """``D`` [n_beads, n_atoms] with ``F = D f``: ``d_Ii = 1`` when atom ``i`` belongs to bead ``I``."""
    d = np.zeros((cg_map.n_beads, cg_map.n_atoms))
    d[cg_map.assignment, np.arange(cg_map.n_atoms)] = 1.0
    return d


def check_consistency(cg_map: CGMap, atol: float = 1e-12) -> None:
    """Raise ValueError unless ``C D^T = I`` (Noid et al.'s condition for the pair of maps)."""
    product = cg_map.weights() @ force_map_matrix(cg_map).T
    error = np.abs(product - np.eye(cg_map.n_beads)).max()
    if error > atol:
        raise ValueError(f"the CG map's position and force maps are inconsistent: "
                         f"max |C D^T - I| = {error:.3g}")


def map_forces(forces, cg_map: CGMap):
    """Mapped forces [..., n_beads, 3] (eV/Å) from atomic forces [..., n_atoms, 3] (numpy or torch):
    each bead gets the sum of the forces on its atoms."""
    if forces.shape[-2:] != (cg_map.n_atoms, 3):
        raise ValueError(f"forces have shape {tuple(forces.shape)}, the CG map needs "
                         f"(..., {cg_map.n_atoms}, 3)")
    d = force_map_matrix(cg_map)
    if isinstance(forces, np.ndarray):
        return np.einsum("ba,...ac->...bc", d.astype(forces.dtype, copy=False), forces)
    import torch

    return torch.einsum("ba,...ac->...bc", torch.as_tensor(d, dtype=forces.dtype, device=forces.device),
                        forces)


def _check_frames(frames: Sequence[Frame], cg_map: CGMap) -> None:
    if len(frames) == 0:
        raise ValueError("no frames to map")
    numbers = frames[0].numbers
    for k, frame in enumerate(frames):
        if frame.n_atoms != cg_map.n_atoms:
            raise ValueError(f"frame {k} has {frame.n_atoms} atoms, the CG map {cg_map.n_atoms}: "
                             "build the map from this trajectory's topology")
        if np.any(frame.numbers != numbers):
            raise ValueError(f"frame {k} has other elements than frame 0: force matching needs one "
                             "molecule with one atom order")
        if frame.forces is None:
            raise ValueError(f"frame {k} has no forces: force matching needs all-atom forces "
                             "(pass energies=<npz with forces> for mdtraj trajectories)")
        if bool(frame.pbc.any()):
            raise ValueError(f"frame {k} is periodic: CG maps here average unwrapped positions, so "
                             "only non-periodic (whole-molecule) frames are supported")


def map_frames(frames: Sequence[Frame], cg_map: CGMap) -> Tuple[np.ndarray, np.ndarray]:
    """Bead positions ``X = C x`` [n_frames, n_beads, 3] (Å) and mapped forces ``F = D f``
    [n_frames, n_beads, 3] (eV/Å), float64, from all-atom frames with forces."""
    _check_frames(frames, cg_map)
    x = np.stack([f.positions for f in frames]).astype(np.float64)
    f = np.stack([f.forces for f in frames]).astype(np.float64)
    return cg_map.bead_positions(x), map_forces(f, cg_map)


def cg_frames(frames: Sequence[Frame], cg_map: CGMap, beads: BeadSet | None = None) -> List[Frame]:
    """Bead frames: positions ``C x``, mapped forces ``D f``, numbers = the bead-type codes of
    ``beads`` (:meth:`BeadSet.from_map` with the frames' elements when not given), no energy
    (force matching has no reference energy). ``info`` keeps the source and index of each frame."""
    positions, forces = map_frames(frames, cg_map)
    if beads is None:
        beads = BeadSet.from_map(cg_map, frames[0].numbers)
    elif beads.n_beads != cg_map.n_beads:
        raise ValueError(f"the bead set has {beads.n_beads} beads, the CG map {cg_map.n_beads}")
    return [Frame(positions=x, numbers=beads.numbers.copy(), forces=f,
                  info={k: v for k, v in frame.info.items() if k in ("source", "index", "time_ps")})
            for x, f, frame in zip(positions, forces, frames)]


@dataclass
class CGDataset:
    """Force-matching data of one CG molecule.

    Attributes:
        positions, forces: [frames, n_beads, 3], Å and eV/Å (mapped forces).
        cg_map: the map that made them; beads: their :class:`BeadSet`.
        temperature_K: the all-atom simulation's temperature (the priors are fitted at it).
        extra: per-frame arrays (e.g. ``run``, ``time_ps``, ``phi``, ``psi``) and scalar notes.
    """

    positions: np.ndarray
    forces: np.ndarray
    cg_map: CGMap
    beads: BeadSet
    temperature_K: float
    extra: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.forces = np.asarray(self.forces, dtype=np.float64)
        n = self.cg_map.n_beads
        if self.positions.ndim != 3 or self.positions.shape[1:] != (n, 3) or len(self.positions) == 0:
            raise ValueError(f"positions must be [frames, {n}, 3], got {self.positions.shape}")
        if self.forces.shape != self.positions.shape:
            raise ValueError(f"forces {self.forces.shape} and positions {self.positions.shape} differ")
        if self.beads.n_beads != n:
            raise ValueError(f"{self.beads.n_beads} beads in the bead set, {n} in the map")
        if not (np.all(np.isfinite(self.positions)) and np.all(np.isfinite(self.forces))):
            raise ValueError("positions and forces must be finite")
        if not (np.isfinite(self.temperature_K) and self.temperature_K > 0):
            raise ValueError(f"temperature_K must be positive, got {self.temperature_K}")

    def __len__(self) -> int:
        return len(self.positions)

    def to_frames(self) -> List[Frame]:
        """Bead :class:`Frame` objects (type-code numbers, mapped forces, no energy)."""
        return [Frame(positions=x, numbers=self.beads.numbers.copy(), forces=f, info={"index": k})
                for k, (x, f) in enumerate(zip(self.positions, self.forces))]


_RESERVED = ("positions", "forces", "cg_map_json", "beads_json", "temperature_K")


def save_cg_dataset(path: Union[str, os.PathLike], data: CGDataset, dtype=np.float32) -> Path:
    """Write ``data`` to ``path`` (.npz, positions and forces as ``dtype``) through a temporary
    file; nothing is pickled (map and beads are JSON strings)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"a CG dataset is an .npz file, got {path.name}")
    clash = set(data.extra) & set(_RESERVED)
    if clash:
        raise ValueError(f"extra arrays may not be named {sorted(clash)}")
    arrays = {"positions": data.positions.astype(dtype), "forces": data.forces.astype(dtype),
              "cg_map_json": np.str_(data.cg_map.to_json()),
              "beads_json": np.str_(json.dumps(data.beads.to_dict())),
              "temperature_K": np.float64(data.temperature_K),
              **{k: np.asarray(v) for k, v in data.extra.items()}}
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_cg_dataset(path: Union[str, os.PathLike]) -> CGDataset:
    """Read a file written by :func:`save_cg_dataset` (ValueError naming the problem otherwise)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CG dataset not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in _RESERVED if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a CG dataset, missing {missing}")
    try:
        cg_map = CGMap.from_json(str(arrays.pop("cg_map_json")))
        beads = BeadSet.from_dict(json.loads(str(arrays.pop("beads_json"))))
        return CGDataset(arrays.pop("positions"), arrays.pop("forces"), cg_map, beads,
                         float(arrays.pop("temperature_K")), extra=arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: invalid CG dataset: {exc}") from None
