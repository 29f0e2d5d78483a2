"""``eqgnn-relax``: relax a structure (and optionally its cell) with an ase_eqgnn potential.

    eqgnn-relax STRUCTURE [--model M] [--fmax F] [--cell] [--optimizer bfgs|fire] [--out relaxed.xyz]
"""

from __future__ import annotations

import argparse
import json
import sys

from ase.io import read

from ..calculator import EqGNNCalculator
from ..pretrained import resolve_model
from ..simulate import OPTIMIZERS, relax


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eqgnn-relax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structure", help="any file ASE reads")
    p.add_argument("--model", default="ala2", help="bundled potential name or checkpoint path")
    p.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="bfgs")
    p.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps")
    p.add_argument("--out", default="relaxed.xyz")
    p.add_argument("--traj", help="optimizer trajectory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--json", help="write the summary here as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    atoms = read(args.structure)
    calc = EqGNNCalculator(str(resolve_model(args.model, kind="potential")), device=args.device,
                           dtype=args.dtype)
    summary = relax(atoms, calc, fmax=args.fmax, cell=args.cell, optimizer=args.optimizer,
                    steps=args.steps, out=args.out, trajectory=args.traj)
    state = "converged" if summary.converged else "NOT converged"
    print(f"{state} after {summary.steps} steps: energy {summary.energy_eV:.6f} eV, "
          f"max force {summary.max_force_eV_per_A:.4f} eV/Å")
    if summary.stress_eV_per_A3 is not None:
        gpa = [s / 6.241509074e-3 for s in summary.stress_eV_per_A3]  # eV/Å^3 -> GPa
        print("stress (GPa, xx yy zz yz xz xy): " + " ".join(f"{s:.4f}" for s in gpa))
    print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary.as_dict(), f, indent=1)
    return 0 if summary.converged else 1


if __name__ == "__main__":
    sys.exit(main())
