"""``eqgnn-relax``: relax a structure (and optionally its cell) with an ase_eqgnn potential.

    eqgnn-relax STRUCTURE [--model M] [--fmax F] [--cell] [--optimizer bfgs|fire] [--out relaxed.xyz]

--out takes any structure format ASE writes (from its name), --traj the optimizer's steps (.traj).
They are written when the run ends; a run that fails leaves existing files as they were. Exit codes:
0 converged, 1 not converged within --steps (the last structure is written), 2 a user error (nothing
written), 3 stopped by the physics (atoms colliding or leaving the model's training domain; the
trajectory so far is kept, no --out is written).
"""

from __future__ import annotations

import sys

from .common import (EXIT_NOT_CONVERGED, EXIT_OK, EXIT_PHYSICS_STOP, calculator_options,
                     command_parser, count, device, end_of_run, kept_files_message, read_structure,
                     real, run_command)

_OPTIMIZERS = ("bfgs", "fire")


def build_parser():
    p = command_parser("eqgnn-relax", __doc__)
    p.add_argument("structure", help="any file ASE reads (its last frame)")
    p.add_argument("--model", default="ala2", help="bundled potential name or checkpoint path")
    p.add_argument("--fmax", type=real(above=0), default=0.05, help="force threshold, eV/Å (> 0)")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--optimizer", choices=_OPTIMIZERS, default="bfgs")
    p.add_argument("--steps", type=count(0), default=1000, help="maximum optimizer steps")
    p.add_argument("--out", default="relaxed.xyz", help="relaxed structure (any format ASE writes)")
    p.add_argument("--traj", help="optimizer trajectory (.traj)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--allow-out-of-domain", action="store_true",
                   help="warn instead of stopping (exit code 3) when atoms come closer than the "
                        "model's training data went (see ase_eqgnn.domain)")
    p.add_argument("--json", help="write the summary here as JSON")
    return p


def run(args) -> int:
    from ase import units

    from ..calculator import EqGNNCalculator
    from ..md_output import structure_format
    from ..outputs import OutputFiles
    from ..pretrained import resolve_model
    from ..simulate import relax

    model = resolve_model(args.model, kind="potential")
    inputs = (args.structure, model)
    plan = OutputFiles(inputs)  # every output checked (and none an input) before the run
    plan.add(args.out, "relaxed structure")
    structure_format(args.out)
    if args.traj:
        plan.add(args.traj, "optimizer trajectory", (".traj",))
    if args.json:
        plan.add(args.json, "summary JSON")
    atoms = read_structure(args.structure)
    calc = EqGNNCalculator(str(model), device=args.device, dtype=args.dtype,
                           **calculator_options(args.allow_out_of_domain))
    summary = relax(atoms, calc, fmax=args.fmax, cell=args.cell, optimizer=args.optimizer,
                    steps=args.steps, out=args.out, trajectory=args.traj, inputs=inputs)
    if not end_of_run("eqgnn-relax", summary, args.json, inputs, stopped=f" after {summary.steps} steps"):
        return EXIT_PHYSICS_STOP
    state = "converged" if summary.converged else "NOT converged"
    print(f"{state} after {summary.steps} steps: energy {summary.energy_eV:.6f} eV, "
          f"max force {summary.max_force_eV_per_A:.4f} eV/Å")
    if summary.stress_eV_per_A3 is not None:
        gpa = [s / units.GPa for s in summary.stress_eV_per_A3]
        print("stress (GPa, xx yy zz yz xz xy): " + " ".join(f"{s:.4f}" for s in gpa))
    print("wrote " + kept_files_message(summary.files))
    return EXIT_OK if summary.converged else EXIT_NOT_CONVERGED


def main(argv=None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
