"""``eqgnn-md``: molecular dynamics with an ase_eqgnn potential.

With no arguments: the bundled alanine-dipeptide potential on its bundled structure, a short NVT run.

    eqgnn-md [STRUCTURE] [--model M] [--ensemble nve|nvt|npt] [--temperature K] [--timestep fs]
             [--steps N] [--traj out.traj] [--log out.csv] [--plot out.png] [--device cpu|cuda]

Outputs: --traj (.traj, .xyz/.extxyz), --log (.csv, or ASE's MDLogger table for .log/.txt), --plot
(.png/.pdf/.svg), --json (the summary); each may be "none". Everything is checked before a file is
written; outputs go to temporary names, the trajectory and log move into place after the first step
(a killed run keeps its frames), the rest at the end: a run that fails before its first step leaves
existing files as they were. Exit codes: 0 done, 2 a user error (nothing written), 3 the run was
stopped by the physics (a blow-up, atoms colliding, or a structure outside the model's training
domain; the frames so far are kept), 130/143 Ctrl-C/SIGTERM (the frames so far are kept). A negative
pressure needs "=": --pressure=-1000.
"""

from __future__ import annotations

import sys

from .common import (EXIT_OK, EXIT_PHYSICS_STOP, calculator_options, command_parser, count, device,
                     end_of_run, kept_files_message, read_structure, real, run_command)

from ..run_checks import MAX_TEMPERATURE_K

DEFAULT_MODEL = "ala2"
DEFAULT_STRUCTURE = "ala2"
_ENSEMBLES = ("nve", "nvt", "npt")


def _optional_path(text: str):
    """argparse type: a path, or None for "none"."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give a file name, or 'none' to write no file")
    return None if text.lower() == "none" else text


def build_parser():
    p = command_parser("eqgnn-md", __doc__)
    p.add_argument("structure", nargs="?",
                   help="any file ASE reads; its last frame (default: bundled alanine dipeptide)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled potential name or checkpoint path")
    p.add_argument("--ensemble", choices=_ENSEMBLES, default="nvt")
    p.add_argument("--temperature", type=real(minimum=0, maximum=MAX_TEMPERATURE_K), default=None,
                   help=f"K (0 to {MAX_TEMPERATURE_K:g}); default 300, or the data's temperature "
                        "for a coarse-grained model")
    p.add_argument("--timestep", type=real(above=0), default=0.5, help="fs (> 0)")
    p.add_argument("--steps", type=count(0), default=1000)
    p.add_argument("--friction", type=real(minimum=0), default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--pressure", type=real(), default=1.0, help="NPT pressure, bar")
    p.add_argument("--interval", type=count(1), default=10, help="steps between frames and log rows")
    p.add_argument("--traj", type=_optional_path, default="md.traj", help="trajectory or 'none'")
    p.add_argument("--log", type=_optional_path, default="md.csv", help="log or 'none'")
    p.add_argument("--plot", type=_optional_path, default="md.png", help="plot or 'none'")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--compile", action="store_true",
                   help="evaluate the model compiled by torch.compile: faster steps for long runs, "
                        "after a first step that compiles (tens of seconds)")
    p.add_argument("--allow-out-of-domain", action="store_true",
                   help="warn instead of stopping (exit code 3) when atoms come closer than the "
                        "model's training data went (see ase_eqgnn.domain)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--json", help="write the summary here as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..calculator import EqGNNCalculator
    from ..outputs import OutputFiles
    from ..pretrained import resolve_model
    from ..simulate import run_md
    from ..structures import load_structure

    model = resolve_model(args.model, kind="potential")
    inputs = [p for p in (args.structure, model) if p is not None]
    plan = OutputFiles(inputs)  # every output checked (and none an input) before the run
    for path, what in ((args.traj, "trajectory"), (args.log, "log"), (args.plot, "plot"),
                       (args.json, "summary JSON")):
        if path:
            plan.add(path, what)
    atoms = read_structure(args.structure) if args.structure else None
    calc = EqGNNCalculator(str(model), device=args.device, dtype=args.dtype, compile=args.compile,
                           **calculator_options(args.allow_out_of_domain))
    cg_temperature = getattr(calc.model, "temperature_K", None)
    if cg_temperature is not None:  # a coarse-grained model: bead structure, masses, temperature
        from ..cg.beads import prepare_bead_structure
        atoms = prepare_bead_structure(atoms, calc.model, load_structure(DEFAULT_STRUCTURE))
    elif atoms is None:
        atoms = load_structure(DEFAULT_STRUCTURE)
    if args.temperature is None:
        args.temperature = 300.0 if cg_temperature is None else cg_temperature
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}), model {args.model}, "
          f"{args.ensemble.upper()} at {args.temperature} K, {args.steps} steps of {args.timestep} fs")
    summary = run_md(atoms, calc, ensemble=args.ensemble, temperature_K=args.temperature,
                     timestep_fs=args.timestep, steps=args.steps, friction_per_fs=args.friction,
                     pressure_bar=args.pressure, traj=args.traj, log=args.log, plot=args.plot,
                     interval=args.interval, seed=args.seed, progress=not args.no_progress,
                     inputs=tuple(inputs))
    print(f"{summary.message}: {summary.steps} steps, {summary.steps_per_second:.1f} steps/s")
    if args.ensemble == "nve":
        print(f"energy drift: {summary.energy_drift_meV_per_atom_per_ps:.3f} meV/atom/ps")
    print(f"temperature: {summary.temperature_mean_K:.1f} ± {summary.temperature_std_K:.1f} K")
    if not end_of_run("eqgnn-md", summary, args.json, inputs, stopped=""):
        return EXIT_PHYSICS_STOP
    print("wrote " + kept_files_message(summary.files))
    return EXIT_OK


def main(argv=None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
