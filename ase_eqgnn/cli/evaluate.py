"""``eqgnn-eval MODEL DATA``: errors of a trained potential on a labelled data file (thin front-end).

MODEL is a model file (e.g. ``run/best.pt``) or a bundled potential name (``eqgnn-models``). Prints
MAE/RMSE of energy (meV/atom), forces (meV/Å) and stress (meV/Å^3, when the data have it);
``--json`` writes them with keys ``energy_mae, energy_rmse, forces_mae, forces_rmse`` (+ ``stress_*``,
``n_frames``, ``n_atoms``), ``--plot`` a parity PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Optional

from ..heap import keep_freed_memory

_UNITS = {"energy": "meV/atom", "forces": "meV/Å", "stress": "meV/Å^3"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eqgnn-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model file (run/best.pt) or bundled potential name")
    p.add_argument("data", help="data file (extxyz, .traj, .db, .npz, or an mdtraj trajectory with --energies)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--plot", help="write an energy/force parity plot to this PNG file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="evaluation precision (default: as stored)")
    p.add_argument("--batch-size", type=int, default=16, help="structures per forward pass")
    p.add_argument("--format", default=None, help="reader format (npz, mdtraj, or an ase.io format)")
    p.add_argument("--energy-unit", default=None, help="energy unit in the file (e.g. kcal/mol)")
    p.add_argument("--length-unit", default=None, help="length unit in the file (e.g. nm)")
    p.add_argument("--energies", default=None, help="energies/forces .npz for an mdtraj trajectory")
    p.add_argument("--topology", default=None, help="topology for DCD/XTC/... trajectories")
    p.add_argument("--index", default=":", help="frames to use, ASE style (':', '::10', ':100')")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: reuse freed memory (ase_eqgnn.heap)
    try:
        from ..pretrained import resolve_model
        from ..train.evaluate import evaluate_model

        path = resolve_model(args.model, kind="potential")
        metrics = evaluate_model(path, args.data, device=args.device, dtype=args.dtype,
                                 batch_size=args.batch_size, plot=args.plot, format=args.format,
                                 energy_unit=args.energy_unit, length_unit=args.length_unit,
                                 energies=args.energies, topology=args.topology, index=args.index)
    except (ValueError, FileNotFoundError) as err:
        print(f"eqgnn-eval: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model} on {args.data}: {metrics['n_frames']} frames, {metrics['n_atoms']} atoms")
    for q in ("energy", "forces", "stress"):
        if f"{q}_mae" in metrics and not math.isnan(metrics[f"{q}_mae"]):
            print(f"  {q:7s} MAE {metrics[f'{q}_mae']:10.4f}  RMSE {metrics[f'{q}_rmse']:10.4f}  {_UNITS[q]}")
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        with open(args.json, "w") as f:
            json.dump(clean, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
