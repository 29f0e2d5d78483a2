"""Beads as ``ase.Atoms``: bead types encoded as atomic numbers, masses summed over each bead's atoms.

Encoding. The distinct bead types of a map, in the order in which they first occur along the beads,
get the codes ``Z = 1, 2, 3, ...``; every bead's ``Atoms`` number is its type's code::

    types  ["ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N"]   (ala2 5-bead map)
    numbers [1, 2, 3, 4, 5]

Why numbers: they are what every ``ase.io`` format stores (extxyz, traj, db ...) and what the
models' species embedding reads, so a bead file round-trips and each bead type is one species. The
chemical symbols ASE shows for them (H, He, Li, ...) are only labels: the physics of a bead is in its
mass, which :class:`BeadSet` sets explicitly (``Atoms.set_masses``; extxyz and traj store it) as the
sum of the atomic masses of its atoms (``ase.data.atomic_masses``). At most 118 types.

The summed mass is not Noid et al.'s momentum-consistent mass for an anchor map (that would be the
anchor atom's mass alone); masses do not enter the configurational Boltzmann distribution that the CG
free-energy surface describes, so they change only the CG dynamics' time scale, and the heavier,
summed masses allow a longer time step.

Example::

    >>> import numpy as np, mdtraj as md
    >>> from ase_eqgnn.cg import ala2_five_bead_map
    >>> from ase_eqgnn.structures import structure_path
    >>> top = md.load(str(structure_path("ala2"))).topology
    >>> beads = BeadSet.from_map(ala2_five_bead_map(top), [a.element.atomic_number for a in top.atoms])
    >>> atoms = beads_to_atoms(beads, np.zeros((5, 3)))
    >>> atoms.numbers.tolist(), atoms.get_masses().round(2).tolist()
    ([1, 2, 3, 4, 5], [43.04, 15.02, 28.05, 28.01, 30.05])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
from ase.data import atomic_masses

from .maps import CGMap

__all__ = ["BeadSet", "beads_to_atoms", "bead_set_of", "MAX_BEAD_TYPES"]

MAX_BEAD_TYPES = 118


@dataclass
class BeadSet:
    """The beads of one CG molecule: per bead its name, type, type code (``Atoms`` number) and mass.

    Attributes:
        names: bead labels, one per bead.
        types: bead type labels, one per bead (equal labels = one species).
        masses: bead masses (amu), one per bead.
        numbers: type codes [n_beads] (derived: 1 + index of the type in :attr:`type_names`).
    """

    names: List[str]
    types: List[str]
    masses: np.ndarray
    numbers: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.names, self.types = list(self.names), list(self.types)
        self.masses = np.asarray(self.masses, dtype=np.float64).reshape(-1)
        n = len(self.names)
        if n == 0 or len(self.types) != n or self.masses.shape != (n,):
            raise ValueError(f"a bead set needs one name, type and mass per bead; got {n} names, "
                             f"{len(self.types)} types, {self.masses.size} masses")
        if not np.all(np.isfinite(self.masses) & (self.masses > 0)):
            raise ValueError("bead masses must be finite and positive")
        if len(self.type_names) > MAX_BEAD_TYPES:
            raise ValueError(f"{len(self.type_names)} bead types; atomic numbers encode at most "
                             f"{MAX_BEAD_TYPES}")
        code = {t: k + 1 for k, t in enumerate(self.type_names)}
        self.numbers = np.array([code[t] for t in self.types], dtype=np.int64)

    @property
    def n_beads(self) -> int:
        return len(self.names)

    @property
    def type_names(self) -> List[str]:
        """Distinct types in order of first occurrence; ``type_names[Z - 1]`` is the type of code Z."""
        return list(dict.fromkeys(self.types))

    @classmethod
    def from_map(cls, cg_map: CGMap, atomic_numbers: Sequence[int]) -> "BeadSet":
        """Names and types from ``cg_map``; masses summed over each bead's atoms (``atomic_numbers``
        of the all-atom molecule, in the map's atom order)."""
        z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
        if z.shape != (cg_map.n_atoms,):
            raise ValueError(f"{z.size} atomic numbers for a CG map of {cg_map.n_atoms} atoms")
        if np.any((z < 1) | (z >= len(atomic_masses))):
            raise ValueError("atomic numbers must be real elements (1..118)")
        masses = np.zeros(cg_map.n_beads)
        np.add.at(masses, cg_map.assignment, atomic_masses[z])
        return cls(cg_map.names, cg_map.types, masses)

    def to_dict(self) -> Dict:
        return {"names": list(self.names), "types": list(self.types), "masses": self.masses.tolist()}

    @classmethod
    def from_dict(cls, data: Dict) -> "BeadSet":
        unknown = set(data) - {"names", "types", "masses"}
        if unknown:
            raise ValueError(f"unknown bead set keys: {sorted(unknown)}")
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BeadSet) and self.to_dict() == other.to_dict()


def bead_set_of(model) -> BeadSet:
    """The :class:`BeadSet` of ``model``: a bead set, a CG potential (its ``beads``), or a CG model
    file path or bundled potential name (``"ala2-cg"``). ValueError for a model without beads."""
    if isinstance(model, BeadSet):
        return model
    beads = getattr(model, "beads", None)
    if isinstance(beads, BeadSet):
        return beads
    if isinstance(model, (str, os.PathLike)):
        from ..checkpoint import load_model
        from ..pretrained import resolve_model

        path = resolve_model(model, kind="potential")
        beads = getattr(load_model(path), "beads", None)
        if isinstance(beads, BeadSet):
            return beads
        raise ValueError(f"{model} is an all-atom potential, not a coarse-grained one: it has no beads")
    raise ValueError(f"expected a CG model file, a bundled CG model name, a CG potential or a BeadSet, "
                     f"got {type(model).__name__}")


def beads_to_atoms(model, positions):
    """``ase.Atoms`` of the beads of ``model`` at ``positions`` [n_beads, 3] (Å): numbers = type
    codes, masses = bead masses, no cell, no periodicity, no calculator.

    ``model``: a CG model file or bundled name (``"ala2-cg"``), a
    :class:`~.potential.CGPotential`, or a :class:`BeadSet`::

        atoms = beads_to_atoms("ala2-cg", x)
        atoms.calc = EqGNNCalculator.from_pretrained("ala2-cg")
    """
    from ase import Atoms

    beads = bead_set_of(model)
    x = np.asarray(positions, dtype=np.float64)
    if x.shape != (beads.n_beads, 3):
        raise ValueError(f"bead positions have shape {x.shape}, expected ({beads.n_beads}, 3)")
    if not np.all(np.isfinite(x)):
        raise ValueError("bead positions must be finite")
    atoms = Atoms(numbers=beads.numbers, positions=x)
    atoms.set_masses(beads.masses)
    return atoms


def prepare_bead_structure(atoms, model, default_all_atom=None):
    """The bead ``Atoms`` a CG ``model`` (:class:`~.potential.CGPotential`) simulates: ``atoms``
    checked to be the model's molecule (numbers in its bead order) with the model's bead masses
    set, or, when ``atoms`` is None, ``default_all_atom`` mapped by the model's CG map. ValueError
    (one line) for anything else."""
    beads = bead_set_of(model)
    if atoms is None:
        cg_map = getattr(model, "cg_map", None)
        if default_all_atom is None or cg_map is None or cg_map.n_atoms != len(default_all_atom):
            raise ValueError("a coarse-grained model needs a bead structure: give a file of its "
                             f"{beads.n_beads} beads (ase_eqgnn.cg.beads_to_atoms makes one)")
        return beads_to_atoms(beads, cg_map.bead_positions(default_all_atom.get_positions()))
    if len(atoms) != beads.n_beads or np.any(atoms.numbers != beads.numbers):
        raise ValueError(f"the structure ({len(atoms)} atoms, numbers {atoms.numbers.tolist()[:8]}) is "
                         f"not this coarse-grained model's molecule: {beads.n_beads} beads with numbers "
                         f"{beads.numbers.tolist()} (ase_eqgnn.cg.beads_to_atoms makes one)")
    atoms = atoms.copy()
    atoms.set_masses(beads.masses)  # the model defines the beads' masses, whatever the file held
    return atoms
