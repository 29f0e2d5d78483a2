"""NumPy archives of labelled frames, in one of three layouts detected from their keys.

============  ==================================================  =====================
layout        keys                                                native units
============  ==================================================  =====================
``pos``       ``pos, atomic_numbers, energy, forces``              eV, eV/Å, Å
              [``cell, pbc, stress``]
``sgdml``     ``R, z, E, F`` [``lattice``] (sGDML / MD17 release)  kcal/mol, kcal/mol/Å, Å
``rmd17``     ``coords, nuclear_charges, energies, forces``        kcal/mol, kcal/mol/Å, Å
============  ==================================================  =====================

Archives are opened with ``allow_pickle=False``: an npz cannot run code.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from .checks import (Index, PathLike, as_float, check_finite, check_pbc_cell, check_per_atom,
                     energies_1d, per_frame_cell, selection)
from .frame import Frame
from .units import energy_factor, length_factor

NPZ_LAYOUTS: dict[str, dict[str, Any]] = {
    "pos": {"keys": ("pos", "atomic_numbers", "energy", "forces"), "energy_unit": "eV"},
    "sgdml": {"keys": ("R", "z", "E", "F"), "energy_unit": "kcal/mol"},
    "rmd17": {"keys": ("coords", "nuclear_charges", "energies", "forces"), "energy_unit": "kcal/mol"},
}


def _detect_npz_layout(keys: set[str], path: PathLike) -> str:
    for name, spec in NPZ_LAYOUTS.items():
        if spec["keys"][0] in keys:
            missing = [k for k in spec["keys"] if k not in keys]
            if missing:
                raise ValueError(f"{path}: npz in the {'/'.join(spec['keys'])} layout is missing field(s) "
                                 f"{', '.join(repr(m) for m in missing)}")
            return name
    layouts = "; ".join(", ".join(s["keys"]) for s in NPZ_LAYOUTS.values())
    raise ValueError(f"{path}: unrecognised npz layout (keys: {', '.join(sorted(keys))}); "
                     f"expected one of: {layouts}")


def read_npz(path: pathlib.Path, energy_unit: str | None, length_unit: str | None,
              index: Index) -> list[Frame]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    layout = _detect_npz_layout(set(arrays), path)
    k_pos, k_z, k_e, k_f = NPZ_LAYOUTS[layout]["keys"]
    e_scale = energy_factor(energy_unit if energy_unit is not None else NPZ_LAYOUTS[layout]["energy_unit"])
    l_scale = length_factor(length_unit if length_unit is not None else "Å")

    pos = as_float(arrays[k_pos], path, k_pos)
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

    energy = energies_1d(as_float(arrays[k_e], path, k_e), n_frames, path, k_e)
    forces = as_float(arrays[k_f], path, k_f)
    if forces.ndim == 2 and n_frames == 1:
        forces = forces[None]
    check_per_atom(forces, n_frames, n_atoms, path, k_f)

    cell_key = "lattice" if layout == "sgdml" else "cell"
    cell = per_frame_cell(arrays.get(cell_key), n_frames, path, cell_key)
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
        stress = as_float(arrays["stress"], path, "stress")
        if stress.shape == (n_frames, 3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
        if stress.shape != (n_frames, 6):
            raise ValueError(f"{path}: field 'stress' must have shape (frames, 6) or (frames, 3, 3), "
                             f"got {stress.shape}")

    sel = selection(index, n_frames, path)
    for name, arr in ((k_pos, pos[sel]), (k_e, energy[sel]), (k_f, forces[sel]), (cell_key, cell[sel])):
        check_finite(arr, path, name)
    if stress is not None:
        check_finite(stress[sel], path, "stress")

    frames = []
    for i in sel:
        c = cell[i] * l_scale
        check_pbc_cell(c, pbc, path, int(i))
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
