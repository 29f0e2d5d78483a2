"""Named unit conversions. Inside ase_eqgnn everything is eV, Å, fs.

Every size comes from :mod:`ase.units` (ASE's CODATA set), so that our readers, ASE's drivers and
the user's own scripts agree to the last bit; the names say which way each factor goes.
"""

from __future__ import annotations

from ase import units

#: 1 kJ/mol in eV
KJ_PER_MOL_IN_EV: float = units.kJ / units.mol
#: 1 kcal/mol in eV (thermochemical calorie, 4.184 J)
KCAL_PER_MOL_IN_EV: float = units.kcal / units.mol
#: 1 hartree in eV
HARTREE_IN_EV: float = units.Hartree
#: 1 Rydberg in eV
RYDBERG_IN_EV: float = units.Rydberg
#: 1 meV in eV
MEV_IN_EV: float = 1.0e-3 * units.eV

#: 1 nm in Å
NM_IN_ANGSTROM: float = units.nm / units.Angstrom
#: 1 bohr in Å
BOHR_IN_ANGSTROM: float = units.Bohr
#: 1 pm in Å
PM_IN_ANGSTROM: float = 1.0e-3 * units.nm

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": MEV_IN_EV,
    "kcal/mol": KCAL_PER_MOL_IN_EV,
    "kJ/mol": KJ_PER_MOL_IN_EV,
    "Hartree": HARTREE_IN_EV,
    "Ha": HARTREE_IN_EV,
    "Ry": RYDBERG_IN_EV,
}
"""Energy unit name -> size of that unit in eV."""

LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "A": 1.0,
    "Ang": 1.0,
    "angstrom": 1.0,
    "nm": NM_IN_ANGSTROM,
    "Bohr": BOHR_IN_ANGSTROM,
    "bohr": BOHR_IN_ANGSTROM,
    "pm": PM_IN_ANGSTROM,
}
"""Length unit name -> size of that unit in Å."""


def energy_factor(unit: str) -> float:
    """Multiply an energy in ``unit`` by this to get eV."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown energy unit {unit!r}; known: {', '.join(ENERGY_UNITS)}") from None


def length_factor(unit: str) -> float:
    """Multiply a length in ``unit`` by this to get Å."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise ValueError(f"unknown length unit {unit!r}; known: {', '.join(LENGTH_UNITS)}") from None
