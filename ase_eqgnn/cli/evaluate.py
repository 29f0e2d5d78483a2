"""``eqgnn-eval MODEL DATA``: errors of a trained potential on a labelled data file (thin front-end).

MODEL is a model file (e.g. ``run/best.pt``) or a bundled potential name (``eqgnn-models``). Prints
MAE/RMSE of energy (meV/atom), forces (meV/Å) and stress (meV/Å^3, when the data have it);
``--json`` writes them with keys ``energy_mae, energy_rmse, forces_mae, forces_rmse`` (+ ``stress_*``,
``n_frames``, ``n_atoms``), ``--plot`` a parity PNG. Both are written when the evaluation has
finished; a run that fails leaves existing files as they were (exit code 2 for a user error).
"""

from __future__ import annotations

import math
import sys
from typing import List, Optional

from .common import command_parser, count, device, existing_file, json_text, run_command

_UNITS = {"energy": "meV/atom", "forces": "meV/Å", "stress": "meV/Å^3"}


def build_parser():
    p = command_parser("eqgnn-eval", __doc__.split("\n\n")[0], defaults_in_help=True)
    p.add_argument("model", help="model file (run/best.pt) or bundled potential name")
    p.add_argument("data", type=existing_file("data file"),
                   help="data file (extxyz, .traj, .db, .npz, or an mdtraj trajectory with --energies)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--plot", help="write an energy/force parity plot to this PNG file")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="evaluation precision (default: as stored)")
    p.add_argument("--batch-size", type=count(1), default=16, help="structures per forward pass")
    p.add_argument("--format", default=None, help="reader format (npz, mdtraj, or an ase.io format)")
    p.add_argument("--energy-unit", default=None, help="energy unit in the file (e.g. kcal/mol)")
    p.add_argument("--length-unit", default=None, help="length unit in the file (e.g. nm)")
    p.add_argument("--energies", type=existing_file("energies file"), default=None,
                   help="energies/forces .npz for an mdtraj trajectory")
    p.add_argument("--topology", type=existing_file("topology file"), default=None,
                   help="topology for DCD/XTC/... trajectories")
    p.add_argument("--index", default=":", help="frames to use, ASE style (':', '::10', ':100')")
    return p


def run(args) -> int:
    from ..outputs import OutputFiles, write_text
    from ..pretrained import resolve_model
    from ..train.evaluate import PLOT_SUFFIXES, evaluate_model

    path = resolve_model(args.model, kind="potential")
    inputs = [p for p in (path, args.data, args.energies, args.topology) if p is not None]
    plan = OutputFiles(inputs)  # every output checked (and none an input) before the evaluation
    if args.json:
        plan.add(args.json, "metrics JSON")
    if args.plot:
        plan.add(args.plot, "parity plot", PLOT_SUFFIXES)
    metrics = evaluate_model(path, args.data, device=args.device, dtype=args.dtype,
                             batch_size=args.batch_size, plot=args.plot, format=args.format,
                             energy_unit=args.energy_unit, length_unit=args.length_unit,
                             energies=args.energies, topology=args.topology, index=args.index)
    print(f"{args.model} on {args.data}: {metrics['n_frames']} frames, {metrics['n_atoms']} atoms")
    for q in ("energy", "forces", "stress"):
        if f"{q}_mae" in metrics and not math.isnan(metrics[f"{q}_mae"]):
            print(f"  {q:7s} MAE {metrics[f'{q}_mae']:10.4f}  RMSE {metrics[f'{q}_rmse']:10.4f}  {_UNITS[q]}")
    if args.json:
        write_text(args.json, json_text(metrics), inputs, "metrics JSON")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
