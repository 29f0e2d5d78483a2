"""Write ala2.data, the LAMMPS data file of in.ala2-langevin.lmp: the bundled alanine dipeptide
(22 atoms) centred in a 30 Å box, types 1-4 = H C N O (the order of the model's elements, which is
the order ``pair_coeff * * H C N O`` and eqgnn-lammps's mass matching both use).

    python write_ala2_data.py [--out ala2.data]
"""

import argparse

from ase.io import write

from ase_eqgnn.structures import load_structure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="ala2.data")
    args = p.parse_args()
    atoms = load_structure("ala2")
    atoms.set_cell([30.0, 30.0, 30.0])
    atoms.center()
    atoms.pbc = False
    write(args.out, atoms, format="lammps-data", units="metal", atom_style="atomic", masses=True,
          specorder=["H", "C", "N", "O"])
    print(f"wrote {args.out} ({len(atoms)} atoms, {atoms.get_chemical_formula()})")


if __name__ == "__main__":
    main()
