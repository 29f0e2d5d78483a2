"""Named unit conversions. Inside ase_eqgnn everything is eV, Å, fs.

Energies are derived from the exact 2019 SI constants, so they agree with ``ase.units`` (CODATA 2014
there) to ~1e-8 relative.
"""

from __future__ import annotations

AVOGADRO: float = 6.02214076e23  # 1/mol (exact)
ELEMENTARY_CHARGE: float = 1.602176634e-19  # C (exact); 1 eV = this many J

#: 1 kJ/mol in eV (= 1/96.485332...)
KJ_PER_MOL_IN_EV: float = 1.0e3 / (AVOGADRO * ELEMENTARY_CHARGE)
#: 1 kcal/mol in eV (thermochemical calorie, 4.184 J)
KCAL_PER_MOL_IN_EV: float = 4.184 * KJ_PER_MOL_IN_EV
#: 1 hartree in eV (CODATA 2018)
HARTREE_IN_EV: float = 27.211386245988
#: 1 Rydberg in eV
RYDBERG_IN_EV: float = HARTREE_IN_EV / 2.0
#: 1 meV in eV
MEV_IN_EV: float = 1.0e-3

#: 1 nm in Å
NM_IN_ANGSTROM: float = 10.0
#: 1 bohr in Å (CODATA 2018)
BOHR_IN_ANGSTROM: float = 0.529177210903
#: 1 pm in Å
PM_IN_ANGSTROM: float = 0.01

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
