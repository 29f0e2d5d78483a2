"""Build the bundled all-atom peptide structures offline (no downloads).

Produces ``ase_eqgnn/structures/ala2.pdb`` (alanine dipeptide, ACE-ALA-NME, 22 atoms) and
``ase_eqgnn/structures/chignolin.pdb`` (GYDPETGTWG, zwitterionic termini: NH3+ / COO-, Asp and Glu
charged, net charge -2, 138 atoms).

How: PeptideBuilder places heavy atoms from internal coordinates. For the alanine dipeptide an
Ala-Ala-Ala chain is built and its end residues are cut down to the caps (residue 1 keeps CA, C, O
-> ACE CH3, C, O; residue 3 keeps N, CA -> NME N, C), so the cap geometry is PeptideBuilder's.
OpenMM's ``Modeller.addHydrogens`` (amber14 templates, pH 7) adds the hydrogens and the structure is
energy-minimised with amber14 (``amber14-all.xml``) + OBC2 implicit solvent (``implicit/obc2.xml``),
no cutoff, no constraints. Atom names are the PDB-standard ones OpenMM and mdtraj use
(ACE: C, O, CH3, H1-H3; NME: N, H, C, H1-H3).

Chignolin starts from a rough beta-hairpin (backbone dihedrals set by hand for a type-I' like turn
around D3-G7), and is then minimised; it is a start structure, not the NMR model.

Runtime: a few seconds.  Usage::

    python training/build_structures.py [--outdir ase_eqgnn/structures]
"""

from __future__ import annotations

import argparse
import io
import pathlib

import numpy as np

AMBER_FILES = ("amber14-all.xml", "implicit/obc2.xml")
REPO = pathlib.Path(__file__).resolve().parents[1]


def _bio_to_pdb_text(structure) -> str:
    from Bio.PDB import PDBIO

    pdbio = PDBIO()
    pdbio.set_structure(structure)
    buf = io.StringIO()
    pdbio.save(buf)
    return buf.getvalue()


def _ala2_heavy_atoms(phi: float, psi: float):
    """Bio.PDB structure of ACE-ALA-NME heavy atoms, central residue at (phi, psi) degrees."""
    from PeptideBuilder import PeptideBuilder

    # phi: residues 2..n; psi_im1: residues 1..n-1.
    st = PeptideBuilder.make_structure("AAA", [phi, -60.0], [150.0, psi])
    residues = list(st[0]["A"])
    ace, _, nme = residues
    for name in ("N", "CB"):
        ace.detach_child(name)
    ace["CA"].id = "CH3"
    ace["CA"].name = "CH3"
    ace["CA"].fullname = " CH3"
    # Bio caches child ids: rebuild the dict entry for the renamed atom
    atom = ace.child_dict.pop("CA")
    ace.child_dict["CH3"] = atom
    ace.resname = "ACE"
    for name in ("CB", "C", "O"):
        nme.detach_child(name)
    atom = nme.child_dict.pop("CA")
    atom.id, atom.name, atom.fullname = "C", "C", " C  "
    nme.child_dict["C"] = atom
    nme.resname = "NME"
    return st


def _chignolin_heavy_atoms():
    """Bio.PDB structure of GYDPETGTWG heavy atoms in a rough hairpin, with the C-terminal OXT."""
    from PeptideBuilder import PeptideBuilder

    seq = "GYDPETGTWG"
    # (phi, psi) per residue in degrees: strands 1-3 and 8-10, a turn around D3-P4-E5-T6-G7.
    dihedrals = [
        (-150.0, 150.0),  # G1
        (-130.0, 140.0),  # Y2
        (-120.0, 130.0),  # D3
        (-60.0, -30.0),  # P4
        (-90.0, -10.0),  # E5
        (-100.0, 10.0),  # T6
        (80.0, 20.0),  # G7
        (-120.0, 140.0),  # T8
        (-130.0, 140.0),  # W9
        (-150.0, 150.0),  # G10
    ]
    phi = [d[0] for d in dihedrals[1:]]
    psi_im1 = [d[1] for d in dihedrals[:-1]]
    st = PeptideBuilder.make_structure(seq, phi, psi_im1)
    return PeptideBuilder.add_terminal_OXT(st)


def protonate_and_minimise(pdb_text: str, *, tolerance_kj: float = 1.0, max_iter: int = 5000):
    """Add hydrogens (amber14, pH 7) and minimise in amber14 + OBC2. Returns (topology, positions nm)."""
    import openmm
    from openmm import app, unit

    pdb = app.PDBFile(io.StringIO(pdb_text))
    ff = app.ForceField(*AMBER_FILES)
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff, pH=7.0)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    integrator = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(ctx, tolerance_kj, max_iter)
    state = ctx.getState(getEnergy=True, getPositions=True)
    e1 = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    print(f"  {modeller.topology.getNumAtoms()} atoms, energy {e0:.1f} -> {e1:.1f} kJ/mol after minimisation")
    return modeller.topology, np.asarray(pos)


def write_pdb(topology, positions_nm: np.ndarray, path: pathlib.Path, remark: str) -> None:
    from openmm import app, unit

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(f"REMARK   1 {remark}\n")
        app.PDBFile.writeFile(topology, positions_nm * unit.nanometer, fh, keepIds=False)
    print(f"  wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outdir", type=pathlib.Path, default=REPO / "ase_eqgnn" / "structures")
    parser.add_argument("--ala2-phi", type=float, default=-80.0, help="central Ala phi (deg)")
    parser.add_argument("--ala2-psi", type=float, default=150.0, help="central Ala psi (deg)")
    args = parser.parse_args(argv)

    print("alanine dipeptide")
    top, pos = protonate_and_minimise(_bio_to_pdb_text(_ala2_heavy_atoms(args.ala2_phi, args.ala2_psi)))
    write_pdb(top, pos, args.outdir / "ala2.pdb",
              "ALANINE DIPEPTIDE ACE-ALA-NME; PEPTIDEBUILDER + OPENMM ADDHYDROGENS; AMBER14/OBC2 MINIMISED")
    print("chignolin")
    top, pos = protonate_and_minimise(_bio_to_pdb_text(_chignolin_heavy_atoms()))
    write_pdb(top, pos, args.outdir / "chignolin.pdb",
              "CHIGNOLIN GYDPETGTWG ZWITTERIONIC; PEPTIDEBUILDER + OPENMM ADDHYDROGENS; AMBER14/OBC2 MINIMISED")


if __name__ == "__main__":
    main()
