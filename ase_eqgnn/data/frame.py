"""`Frame`: one labelled configuration (positions, elements, cell, energy, forces, stress) in eV and Å,
the record every dataset reader returns.

>>> import numpy as np
>>> f = Frame(positions=np.zeros((1, 3)), numbers=np.array([29]), energy=-3.5)
>>> f.n_atoms, f.to_atoms().get_potential_energy()
(1, -3.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

__all__ = ["Frame", "frames_to_atoms"]


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
                stress = full_3x3_to_voigt_6_stress(stress)
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
