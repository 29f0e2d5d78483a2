"""Dataset readers: every supported file becomes a list of :class:`Frame` in eV, Å.

Formats (picked from the extension, or forced with ``format=``):

- ``"npz"``: NumPy archives in one of three layouts, detected from the keys:

  ============  ==================================================  =====================
  layout        keys                                                native units
  ============  ==================================================  =====================
  ``pos``       ``pos, atomic_numbers, energy, forces``              eV, eV/Å, Å
                [``cell, pbc, stress``]
  ``sgdml``     ``R, z, E, F`` [``lattice``] (sGDML / MD17 release)  kcal/mol, kcal/mol/Å, Å
  ``rmd17``     ``coords, nuclear_charges, energies, forces``        kcal/mol, kcal/mol/Å, Å
  ============  ==================================================  =====================

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

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from .units import NM_IN_ANGSTROM, energy_factor, length_factor

__all__ = ["Frame", "read_dataset", "split_dataset", "frames_to_atoms", "MDTRAJ_EXTENSIONS"]

PathLike = Union[str, os.PathLike]
Index = Union[int, slice, str]

#: Extensions routed to mdtraj when ``format`` is not given.
MDTRAJ_EXTENSIONS: frozenset[str] = frozenset(
    {".h5", ".lh5", ".dcd", ".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".binpos", ".mdcrd", ".crd",
     ".pdb", ".pdb.gz", ".gro", ".dtr", ".arc", ".hoomdxml", ".ncrst", ".rst7", ".lammpstrj"}
)
#: mdtraj formats that carry no topology and need ``topology=``.
_NEEDS_TOPOLOGY = frozenset({".dcd", ".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".binpos", ".mdcrd",
                             ".crd", ".dtr", ".lammpstrj", ".ncrst", ".rst7"})

_NPZ_LAYOUTS: dict[str, dict[str, Any]] = {
    "pos": {"keys": ("pos", "atomic_numbers", "energy", "forces"), "energy_unit": "eV"},
    "sgdml": {"keys": ("R", "z", "E", "F"), "energy_unit": "kcal/mol"},
    "rmd17": {"keys": ("coords", "nuclear_charges", "energies", "forces"), "energy_unit": "kcal/mol"},
}


@dataclass
class Frame:
    """One labelled configuration, always in eV and Å.

    Attributes:
        positions: (n, 3) float64, Å.
        numbers: (n,) int64 atomic numbers.
        cell: (3, 3) float64, Å, rows are lattice vectors (zeros when there is none).
        pbc: (3,) bool.
        energy: total potential energy, eV, or None.
        forces: (n, 3) float64, eV/Å, or None.
        stress: (6,) float64 Voigt (xx, yy, zz, yz, xz, xy) as in ASE, eV/Å^3, or None.
        info: where the frame came from (``source`` path, ``index`` in the file) and any extras.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def to_atoms(self):
        """``ase.Atoms`` with a SinglePointCalculator holding energy/forces/stress (when present)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        results = {}
        if self.energy is not None:
            results["energy"] = results["free_energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    @classmethod
    def from_atoms(cls, atoms, *, energy_scale: float = 1.0, length_scale: float = 1.0,
                   info: dict | None = None) -> "Frame":
        """Frame from ``ase.Atoms`` and its calculator results (scaled by the given unit factors)."""
        results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
        energy = results.get("energy", results.get("free_energy"))
        forces = results.get("forces")
        stress = results.get("stress")
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64)
            if stress.shape == (3, 3):
                stress = _full_to_voigt(stress)
        return cls(
            positions=np.array(atoms.positions, dtype=np.float64) * length_scale,
            numbers=np.array(atoms.numbers, dtype=np.int64),
            cell=np.array(atoms.cell.array, dtype=np.float64) * length_scale,
            pbc=np.array(atoms.pbc, dtype=bool),
            energy=None if energy is None else float(energy) * energy_scale,
            forces=None if forces is None else np.array(forces, dtype=np.float64) * (energy_scale / length_scale),
            stress=None if stress is None else stress * (energy_scale / length_scale**3),
            info=dict(info or {}),
        )


def frames_to_atoms(frames: Sequence[Frame]) -> list:
    """``[f.to_atoms() for f in frames]``."""
    return [f.to_atoms() for f in frames]


# --------------------------------------------------------------------------------------------------
# entry point


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
        frames = _read_npz(path, energy_unit, length_unit, index)
    elif fmt == "mdtraj":
        if length_unit is not None:
            raise ValueError(f"{path}: length_unit does not apply to mdtraj trajectories "
                             "(mdtraj converts the file's units itself)")
        frames = _read_mdtraj(path, energies, topology, energy_unit, index)
    else:
        if energies is not None or topology is not None:
            raise ValueError(f"{path}: energies= and topology= only apply to mdtraj trajectories; "
                             f"got format {fmt!r}")
        frames = _read_ase(path, fmt, energy_unit, length_unit, index)
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


# --------------------------------------------------------------------------------------------------
# index handling


def _selection(index: Index, n: int, path: pathlib.Path) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# checks


def _check_finite(arr: np.ndarray, path: PathLike, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0]
        where = f" (first at frame {first[0]})" if arr.ndim >= 1 and arr.shape[0] > 0 else ""
        raise ValueError(f"{path}: field {name!r} has {int(bad.sum())} non-finite values{where}")


def _as_float(arr: Any, path: PathLike, name: str) -> np.ndarray:
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: field {name!r} is not numeric") from None


def _energies_1d(e: np.ndarray, n_frames: int, path: PathLike, name: str) -> np.ndarray:
    """(frames,) or (frames, 1) -> (frames,)."""
    if e.ndim == 2 and e.shape[1] == 1:
        e = e[:, 0]
    if e.ndim != 1:
        raise ValueError(f"{path}: field {name!r} must have shape (frames,) or (frames, 1), got {e.shape}")
    if e.shape[0] != n_frames:
        raise ValueError(f"{path}: field {name!r} has {e.shape[0]} frames but the positions have {n_frames}")
    return e


def _check_per_atom(arr: np.ndarray, n_frames: int, n_atoms: int, path: PathLike, name: str) -> None:
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{path}: field {name!r} must have shape (frames, atoms, 3), got {arr.shape}")
    if arr.shape[0] != n_frames:
        raise ValueError(f"{path}: field {name!r} has {arr.shape[0]} frames but the positions have {n_frames}")
    if arr.shape[1] != n_atoms:
        raise ValueError(f"{path}: field {name!r} has {arr.shape[1]} atoms but the positions have {n_atoms}")


def _full_to_voigt(s: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6) in ASE's Voigt order xx, yy, zz, yz, xz, xy."""
    return np.stack([s[..., 0, 0], s[..., 1, 1], s[..., 2, 2], s[..., 1, 2], s[..., 0, 2], s[..., 0, 1]],
                    axis=-1)


def _check_pbc_cell(cell: np.ndarray, pbc: np.ndarray, path: PathLike, frame: int) -> None:
    for k in range(3):
        if pbc[k] and not np.any(cell[k]):
            raise ValueError(f"{path}: frame {frame} is periodic along axis {k} but its cell vector is zero")
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"{path}: frame {frame} is fully periodic but its cell has zero volume")


# --------------------------------------------------------------------------------------------------
# npz


def _detect_npz_layout(keys: set[str], path: PathLike) -> str:
    for name, spec in _NPZ_LAYOUTS.items():
        if spec["keys"][0] in keys:
            missing = [k for k in spec["keys"] if k not in keys]
            if missing:
                raise ValueError(f"{path}: npz in the {'/'.join(spec['keys'])} layout is missing field(s) "
                                 f"{', '.join(repr(m) for m in missing)}")
            return name
    layouts = "; ".join(", ".join(s["keys"]) for s in _NPZ_LAYOUTS.values())
    raise ValueError(f"{path}: unrecognised npz layout (keys: {', '.join(sorted(keys))}); "
                     f"expected one of: {layouts}")


def _read_npz(path: pathlib.Path, energy_unit: str | None, length_unit: str | None,
              index: Index) -> list[Frame]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    layout = _detect_npz_layout(set(arrays), path)
    k_pos, k_z, k_e, k_f = _NPZ_LAYOUTS[layout]["keys"]
    e_scale = energy_factor(energy_unit if energy_unit is not None else _NPZ_LAYOUTS[layout]["energy_unit"])
    l_scale = length_factor(length_unit if length_unit is not None else "Å")

    pos = _as_float(arrays[k_pos], path, k_pos)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise ValueError(f"{path}: field {k_pos!r} must have shape (frames, atoms, 3), got {pos.shape}")
    n_frames, n_atoms = pos.shape[:2]

    z = np.asarray(arrays[k_z])
    if not np.issubdtype(z.dtype, np.number):
        raise ValueError(f"{path}: field {k_z!r} is not numeric")
    if z.ndim == 1:
        if z.shape[0] != n_atoms:
            raise ValueError(f"{path}: field {k_z!r} has {z.shape[0]} atoms but {k_pos!r} has {n_atoms}")
    elif z.ndim == 2:
        if z.shape != (n_frames, n_atoms):
            raise ValueError(f"{path}: field {k_z!r} has shape {z.shape}, expected ({n_atoms},) or "
                             f"({n_frames}, {n_atoms})")
    else:
        raise ValueError(f"{path}: field {k_z!r} must have shape (atoms,) or (frames, atoms), got {z.shape}")
    if np.any(z != np.round(z)) or np.any(z < 1) or np.any(z > 118):
        raise ValueError(f"{path}: field {k_z!r} holds values that are not atomic numbers 1-118")
    z = z.astype(np.int64)

    energy = _energies_1d(_as_float(arrays[k_e], path, k_e), n_frames, path, k_e)
    forces = _as_float(arrays[k_f], path, k_f)
    if forces.ndim == 2 and n_frames == 1:
        forces = forces[None]
    _check_per_atom(forces, n_frames, n_atoms, path, k_f)

    cell_key = "lattice" if layout == "sgdml" else "cell"
    cell = _per_frame_cell(arrays.get(cell_key), n_frames, path, cell_key)
    if "pbc" in arrays:
        pbc = np.asarray(arrays["pbc"]).astype(bool)
        pbc = np.broadcast_to(pbc, (3,)) if pbc.ndim == 0 else pbc
        if pbc.shape != (3,):
            raise ValueError(f"{path}: field 'pbc' must have shape (3,), got {pbc.shape}")
    else:
        # sGDML stores a lattice only for periodic systems
        pbc = np.full(3, layout == "sgdml" and cell_key in arrays)

    stress = None
    if "stress" in arrays:
        stress = _as_float(arrays["stress"], path, "stress")
        if stress.shape == (n_frames, 3, 3):
            stress = _full_to_voigt(stress)
        if stress.shape != (n_frames, 6):
            raise ValueError(f"{path}: field 'stress' must have shape (frames, 6) or (frames, 3, 3), "
                             f"got {stress.shape}")

    sel = _selection(index, n_frames, path)
    for name, arr in ((k_pos, pos[sel]), (k_e, energy[sel]), (k_f, forces[sel]), (cell_key, cell[sel])):
        _check_finite(arr, path, name)
    if stress is not None:
        _check_finite(stress[sel], path, "stress")

    frames = []
    for i in sel:
        c = cell[i] * l_scale
        _check_pbc_cell(c, pbc, path, int(i))
        frames.append(Frame(
            positions=pos[i] * l_scale,
            numbers=(z if z.ndim == 1 else z[i]).copy(),
            cell=c,
            pbc=pbc.copy(),
            energy=float(energy[i] * e_scale),
            forces=forces[i] * (e_scale / l_scale),
            stress=None if stress is None else stress[i] * (e_scale / l_scale**3),
            info={"source": str(path), "index": int(i)},
        ))
    return frames


def _per_frame_cell(cell: np.ndarray | None, n_frames: int, path: PathLike, name: str) -> np.ndarray:
    if cell is None:
        return np.zeros((n_frames, 3, 3))
    cell = _as_float(cell, path, name)
    if cell.shape == (3,):
        cell = np.diag(cell)
    if cell.shape == (3, 3):
        return np.broadcast_to(cell, (n_frames, 3, 3))
    if cell.shape == (n_frames, 3, 3):
        return cell
    raise ValueError(f"{path}: field {name!r} must have shape (3, 3) or (frames, 3, 3), got {cell.shape}")


# --------------------------------------------------------------------------------------------------
# mdtraj trajectory + energies npz


def _read_mdtraj(path: pathlib.Path, energies: PathLike | None, topology: PathLike | None,
                 energy_unit: str | None, index: Index) -> list[Frame]:
    import mdtraj

    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if topology is None and suffix in _NEEDS_TOPOLOGY:
        raise ValueError(f"{path}: {suffix} trajectories carry no topology; pass topology=<pdb or h5 file>")
    if topology is not None and not pathlib.Path(topology).exists():
        raise FileNotFoundError(f"topology file not found: {topology}")
    kwargs = {} if topology is None else {"top": str(topology)}
    try:
        traj = mdtraj.load(str(path), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: mdtraj could not read it: {exc}") from exc
    n_frames, n_atoms = traj.n_frames, traj.n_atoms
    pos = np.asarray(traj.xyz, dtype=np.float64) * NM_IN_ANGSTROM
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in traj.topology.atoms],
                       dtype=np.int64)
    if np.any(numbers < 1):
        bad = [a.name for a in traj.topology.atoms if a.element is None or a.element.atomic_number < 1][:5]
        raise ValueError(f"{path}: topology atoms without a chemical element (virtual sites?): {bad}")
    if traj.unitcell_vectors is not None:
        cell = np.asarray(traj.unitcell_vectors, dtype=np.float64) * NM_IN_ANGSTROM
        pbc = np.ones(3, dtype=bool)
    else:
        cell = np.zeros((n_frames, 3, 3))
        pbc = np.zeros(3, dtype=bool)

    energy = forces = None
    epath = None
    if energies is not None:
        epath = pathlib.Path(energies)
        if not epath.exists():
            raise FileNotFoundError(f"energies file not found: {epath}")
        with np.load(epath, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        for key in ("energy", "forces"):
            if key not in arrays:
                raise ValueError(f"{epath}: missing field {key!r} (expected 'energy' (frames,) and "
                                 f"'forces' (frames, atoms, 3))")
        e_scale = energy_factor(energy_unit if energy_unit is not None else "eV")
        energy = _energies_1d(_as_float(arrays["energy"], epath, "energy"), n_frames, epath, "energy")
        forces = _as_float(arrays["forces"], epath, "forces")
        if forces.ndim == 3 and forces.shape[0] == n_frames and forces.shape[1] != n_atoms:
            raise ValueError(f"{epath}: field 'forces' has {forces.shape[1]} atoms but the trajectory "
                             f"{path} has {n_atoms}")
        if forces.ndim == 3 and forces.shape[0] != n_frames:
            raise ValueError(f"{epath}: field 'forces' has {forces.shape[0]} frames but the trajectory "
                             f"{path} has {n_frames}")
        _check_per_atom(forces, n_frames, n_atoms, epath, "forces")
        energy, forces = energy * e_scale, forces * e_scale
        if "atomic_numbers" in arrays:
            z = np.asarray(arrays["atomic_numbers"])
            if z.shape != numbers.shape or np.any(z != numbers):
                raise ValueError(f"{epath}: field 'atomic_numbers' does not match the elements of {path}")
        if "pos" in arrays:
            ref = _as_float(arrays["pos"], epath, "pos")
            if ref.shape != pos.shape:
                raise ValueError(f"{epath}: field 'pos' has shape {ref.shape}, trajectory {path} has {pos.shape}")
            dev = np.nanmax(np.abs(ref - pos)) if ref.size else 0.0
            if not dev <= 1e-3:
                raise ValueError(f"{epath}: field 'pos' differs from the positions in {path} by up to "
                                 f"{dev:.3g} Å: the energies do not belong to this trajectory")

    sel = _selection(index, n_frames, path)
    _check_finite(pos[sel], path, "positions")
    if energy is not None:
        _check_finite(energy[sel], epath, "energy")
        _check_finite(forces[sel], epath, "forces")
    return [
        Frame(
            positions=pos[i],
            numbers=numbers.copy(),
            cell=cell[i],
            pbc=pbc.copy(),
            energy=None if energy is None else float(energy[i]),
            forces=None if forces is None else forces[i],
            info={"source": str(path), "index": int(i), "time_ps": float(traj.time[i])},
        )
        for i in sel
    ]


# --------------------------------------------------------------------------------------------------
# ASE


def _read_ase(path: pathlib.Path, fmt: str | None, energy_unit: str | None, length_unit: str | None,
              index: Index) -> list[Frame]:
    import ase.io

    e_scale = energy_factor(energy_unit if energy_unit is not None else "eV")
    l_scale = length_factor(length_unit if length_unit is not None else "Å")
    if isinstance(index, (int, np.integer)):
        read_index: int | str = int(index)
    else:
        read_index = ":"  # read all, then select, so frame ids are positions in the file
    try:
        images = ase.io.read(path, index=read_index, format=fmt)
    except StopIteration:
        images = []
    except IndexError:
        raise ValueError(f"{path}: index {index!r} out of range") from None
    except (ValueError, KeyError, OSError, TypeError, ase.io.formats.UnknownFileTypeError) as exc:
        raise ValueError(f"{path}: ase.io.read failed ({type(exc).__name__}: {exc})") from exc
    if isinstance(read_index, int):
        images = [(read_index, images)]
    else:
        images = [(int(i), images[i]) for i in _selection(index, len(images), path)]
    frames = []
    for frame_id, atoms in images:
        f = Frame.from_atoms(atoms, energy_scale=e_scale, length_scale=l_scale,
                             info={**{str(key): v for key, v in atoms.info.items()},
                                   "source": str(path), "index": frame_id})
        _check_finite(f.positions, path, f"positions (frame {frame_id})")
        if f.energy is not None:
            _check_finite(np.array([f.energy]), path, f"energy (frame {frame_id})")
        if f.forces is not None:
            if f.forces.shape != f.positions.shape:
                raise ValueError(f"{path}: frame {frame_id} field 'forces' has shape {f.forces.shape}, "
                                 f"positions {f.positions.shape}")
            _check_finite(f.forces, path, f"forces (frame {frame_id})")
        if f.stress is not None:
            if f.stress.shape != (6,):
                raise ValueError(f"{path}: frame {frame_id} field 'stress' has shape {f.stress.shape}")
            _check_finite(f.stress, path, f"stress (frame {frame_id})")
        _check_pbc_cell(f.cell, f.pbc, path, frame_id)
        frames.append(f)
    return frames


# --------------------------------------------------------------------------------------------------
# splits


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
