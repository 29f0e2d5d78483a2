"""All-atom peptide structures shipped with the package (built offline, see training/build_structures.py).

- ``"ala2"``: alanine dipeptide ACE-ALA-NME, 22 atoms, amber14/OBC2-minimised.
- ``"chignolin"``: GYDPETGTWG, 138 atoms, zwitterionic termini (NH3+/COO-), Asp/Glu charged
  (net charge -2), amber14/OBC2-minimised rough beta-hairpin.

Atom names are the PDB-standard ones used by OpenMM and mdtraj (ACE: CH3, H1-H3, C, O;
NME: N, H, C, H1-H3). The files load with ``mdtraj.load`` and ``openmm.app.PDBFile``.
"""

from __future__ import annotations

import pathlib

import ase

__all__ = ["STRUCTURE_NAMES", "structure_path", "load_structure"]

STRUCTURE_NAMES: tuple[str, ...] = ("ala2", "chignolin")
_DIR = pathlib.Path(__file__).resolve().parent


def structure_path(name: str) -> pathlib.Path:
    """Path of the bundled PDB file for ``name`` (one of ``STRUCTURE_NAMES``)."""
    if name not in STRUCTURE_NAMES:
        raise ValueError(f"unknown structure {name!r}; valid names are {', '.join(STRUCTURE_NAMES)}")
    path = _DIR / f"{name}.pdb"
    if not path.is_file():
        raise FileNotFoundError(f"bundled structure file missing: {path} (reinstall the package)")
    return path


def load_structure(name: str) -> ase.Atoms:
    """The bundled structure as non-periodic ``ase.Atoms`` (positions in Å).

    ``atoms.arrays`` also holds the PDB ``atomtypes`` (atom names), ``residuenames`` and
    ``residuenumbers`` as read by ASE's PDB reader.
    """
    import ase.io

    atoms = ase.io.read(structure_path(name), format="proteindatabank")
    atoms.pbc = False
    atoms.cell = None
    return atoms
