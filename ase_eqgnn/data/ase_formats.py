"""Every format ``ase.io.read`` knows (extxyz, ``.traj``, ``.db``, ...): energies, forces and stress
come from the attached calculator results, which ASE gives in eV, eV/Å, eV/Å^3.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .checks import Index, check_finite, check_pbc_cell, selection
from .frame import Frame
from .units import energy_factor, length_factor


def read_ase(path: pathlib.Path, fmt: str | None, energy_unit: str | None, length_unit: str | None,
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
        images = [(int(i), images[i]) for i in selection(index, len(images), path)]
    frames = []
    for frame_id, atoms in images:
        f = Frame.from_atoms(atoms, energy_scale=e_scale, length_scale=l_scale,
                             info={**{str(key): v for key, v in atoms.info.items()},
                                   "source": str(path), "index": frame_id})
        check_finite(f.positions, path, f"positions (frame {frame_id})")
        if f.energy is not None:
            check_finite(np.array([f.energy]), path, f"energy (frame {frame_id})")
        if f.forces is not None:
            if f.forces.shape != f.positions.shape:
                raise ValueError(f"{path}: frame {frame_id} field 'forces' has shape {f.forces.shape}, "
                                 f"positions {f.positions.shape}")
            check_finite(f.forces, path, f"forces (frame {frame_id})")
        if f.stress is not None:
            if f.stress.shape != (6,):
                raise ValueError(f"{path}: frame {frame_id} field 'stress' has shape {f.stress.shape}")
            check_finite(f.stress, path, f"stress (frame {frame_id})")
        check_pbc_cell(f.cell, f.pbc, path, frame_id)
        frames.append(f)
    return frames
