"""LAMMPS atom types -> the model's elements, for ``eqgnn-lammps``: named (``--elements``, one per
type, like ``pair_coeff * *``) or guessed from each type's mass.

Example
-------
>>> types_from_masses([1.008, 15.999], species=[1, 6, 7, 8])   # H and O by their masses
[1, 8]
>>> types_from_symbols(["O", "H"], species=[1, 8], ntypes=2)
[8, 1]
"""

from __future__ import annotations

from typing import List, Sequence

from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from .script import InputError

#: A LAMMPS type's mass may differ this much (amu) from ASE's mass of the element guessed for it.
MASS_TOLERANCE = 0.5


def types_from_masses(masses: Sequence[float], species: Sequence[int]) -> List[int]:
    """The model's element (atomic number) for each LAMMPS type, guessed from the type's mass."""
    out = []
    for t, m in enumerate(masses, start=1):
        z = min(species, key=lambda s: abs(atomic_masses[s] - m))
        if abs(atomic_masses[z] - m) > MASS_TOLERANCE:
            known = ", ".join(f"{chemical_symbols[s]} {atomic_masses[s]:.3f}" for s in species)
            raise InputError(f"atom type {t} has mass {m:g}, which matches none of the model's "
                             f"elements ({known}); give --elements")
        out.append(int(z))
    return out


def types_from_symbols(symbols: Sequence[str], species: Sequence[int], ntypes: int) -> List[int]:
    """Atomic numbers for ``symbols`` (one per LAMMPS type, as in ``pair_coeff * *``)."""
    if len(symbols) != ntypes:
        raise InputError(f"--elements names {len(symbols)} element(s) but the input has {ntypes} "
                         "atom type(s); give one element per type")
    return [check_element(s, species) for s in symbols]


def check_element(symbol: str, species: Sequence[int]) -> int:
    """The atomic number of ``symbol``, which the model must know; InputError otherwise."""
    z = atomic_numbers.get(symbol)
    if z is None or z not in species:
        known = " ".join(chemical_symbols[s] for s in species)
        raise InputError(f"element {symbol!r} is not one of the model's elements ({known})")
    return z


__all__ = ["MASS_TOLERANCE", "check_element", "types_from_masses", "types_from_symbols"]
