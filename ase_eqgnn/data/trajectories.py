"""MD trajectories read by mdtraj, with per-frame energies and forces from a companion npz.

Positions come from the trajectory (mdtraj's nm -> Å); energies and forces from ``energies=`` (an
``.npz`` with ``energy`` (frames,) and ``forces`` (frames, atoms, 3), ``pos`` optional there but
checked against the trajectory when present). Without ``energies=`` the frames carry positions only.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .checks import (Index, PathLike, as_float, check_finite, check_per_atom, energies_1d,
                     selection)
from .frame import Frame
from .units import NM_IN_ANGSTROM, energy_factor

#: Extensions routed to mdtraj when ``format`` is not given.
MDTRAJ_EXTENSIONS: frozenset[str] = frozenset(
    {".h5", ".lh5", ".dcd", ".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".binpos", ".mdcrd", ".crd",
     ".pdb", ".pdb.gz", ".gro", ".dtr", ".arc", ".hoomdxml", ".ncrst", ".rst7", ".lammpstrj"}
)
#: mdtraj formats that carry no topology and need ``topology=``.
_NEEDS_TOPOLOGY = frozenset({".dcd", ".xtc", ".trr", ".nc", ".ncdf", ".netcdf", ".binpos", ".mdcrd",
                             ".crd", ".dtr", ".lammpstrj", ".ncrst", ".rst7"})


def read_mdtraj(path: pathlib.Path, energies: PathLike | None, topology: PathLike | None,
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
        energy = energies_1d(as_float(arrays["energy"], epath, "energy"), n_frames, epath, "energy")
        forces = as_float(arrays["forces"], epath, "forces")
        if forces.ndim == 3 and forces.shape[0] == n_frames and forces.shape[1] != n_atoms:
            raise ValueError(f"{epath}: field 'forces' has {forces.shape[1]} atoms but the trajectory "
                             f"{path} has {n_atoms}")
        if forces.ndim == 3 and forces.shape[0] != n_frames:
            raise ValueError(f"{epath}: field 'forces' has {forces.shape[0]} frames but the trajectory "
                             f"{path} has {n_frames}")
        check_per_atom(forces, n_frames, n_atoms, epath, "forces")
        energy, forces = energy * e_scale, forces * e_scale
        if "atomic_numbers" in arrays:
            z = np.asarray(arrays["atomic_numbers"])
            if z.shape != numbers.shape or np.any(z != numbers):
                raise ValueError(f"{epath}: field 'atomic_numbers' does not match the elements of {path}")
        if "pos" in arrays:
            ref = as_float(arrays["pos"], epath, "pos")
            if ref.shape != pos.shape:
                raise ValueError(f"{epath}: field 'pos' has shape {ref.shape}, trajectory {path} has {pos.shape}")
            dev = np.nanmax(np.abs(ref - pos)) if ref.size else 0.0
            if not dev <= 1e-3:
                raise ValueError(f"{epath}: field 'pos' differs from the positions in {path} by up to "
                                 f"{dev:.3g} Å: the energies do not belong to this trajectory")

    sel = selection(index, n_frames, path)
    check_finite(pos[sel], path, "positions")
    if energy is not None:
        check_finite(energy[sel], epath, "energy")
        check_finite(forces[sel], epath, "forces")
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
