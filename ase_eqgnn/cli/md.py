"""``eqgnn-md``: molecular dynamics with an ase_eqgnn potential.

With no arguments: the bundled alanine-dipeptide potential on its bundled structure, a short NVT run.

    eqgnn-md [STRUCTURE] [--model M] [--ensemble nve|nvt|npt] [--temperature K] [--timestep fs]
             [--steps N] [--traj out.traj] [--log out.csv] [--plot out.png] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys

from ase.io import read

from ..calculator import EqGNNCalculator
from ..pretrained import resolve_model
from ..simulate import ENSEMBLES, run_md
from ..structures import load_structure

DEFAULT_MODEL = "ala2"
DEFAULT_STRUCTURE = "ala2"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eqgnn-md", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structure", nargs="?", help="any file ASE reads (default: bundled alanine dipeptide)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled potential name or checkpoint path")
    p.add_argument("--ensemble", choices=ENSEMBLES, default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--pressure", type=float, default=1.0, help="NPT pressure, bar")
    p.add_argument("--interval", type=int, default=10, help="steps between frames and log rows")
    p.add_argument("--traj", default="md.traj")
    p.add_argument("--log", default="md.csv")
    p.add_argument("--plot", default="md.png")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--compile", action="store_true",
                   help="evaluate the model compiled by torch.compile: faster steps for long runs, "
                        "after a first step that compiles (tens of seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the summary here as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    atoms = read(args.structure) if args.structure else load_structure(DEFAULT_STRUCTURE)
    calc = EqGNNCalculator(str(resolve_model(args.model, kind="potential")), device=args.device,
                           dtype=args.dtype, compile=args.compile)
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}), model {args.model}, "
          f"{args.ensemble.upper()} at {args.temperature} K, {args.steps} steps of {args.timestep} fs")
    summary = run_md(atoms, calc, ensemble=args.ensemble, temperature_K=args.temperature,
                     timestep_fs=args.timestep, steps=args.steps, friction_per_fs=args.friction,
                     pressure_bar=args.pressure, traj=args.traj, log=args.log, plot=args.plot,
                     interval=args.interval, seed=args.seed, progress=not args.no_progress)
    print(f"{summary.message}: {summary.steps} steps, {summary.steps_per_second:.1f} steps/s")
    if args.ensemble == "nve":
        print(f"energy drift: {summary.energy_drift_meV_per_atom_per_ps:.3f} meV/atom/ps")
    print(f"temperature: {summary.temperature_mean_K:.1f} ± {summary.temperature_std_K:.1f} K")
    print("wrote " + ", ".join(summary.files.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary.as_dict(), f, indent=1)
    return 0 if summary.completed else 1


if __name__ == "__main__":
    sys.exit(main())
