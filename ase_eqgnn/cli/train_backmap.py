"""``eqgnn-train-backmap``: train a CG back-mapping VAE on all-atom trajectories (thin front-end).

    eqgnn-train-backmap [CONFIG.yaml] --traj ala2_train.h5 --map ala2-5bead --out runs/bm \\
                        [--top TOP] [--max-epochs N] [--max-time SECONDS] [--batch-size B] ...

Maps: ``ala2-5bead`` (ACE C, ALA N, ALA CA, ALA C, NME N), ``residue`` (centre of geometry per
residue), ``residue-com`` (centre of mass), ``ca`` (alpha carbons). The run directory gets
config.yaml, last.pt, best.pt, log.csv and learning_curve.png; re-running the same command with the
same ``--out`` resumes from last.pt (``--max-epochs``/``--max-time`` may be raised).
``--init-from CKPT`` starts a new run from the weights of a back-mapping model of the same molecule
and map (fine-tuning).
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .common import command_parser, count, device, existing_file, real, run_command


def build_parser():
    p = command_parser("eqgnn-train-backmap", __doc__)
    p.add_argument("config", nargs="?", type=existing_file("config"),
                   help="YAML config (keys of ase_eqgnn.cg.train.DEFAULT_CONFIG)")
    p.add_argument("--traj", nargs="+", default=None, type=existing_file("trajectory"),
                   help="all-atom trajectories (any mdtraj format)")
    p.add_argument("--top", default=None, type=existing_file("topology"),
                   help="topology for trajectories without one")
    p.add_argument("--map", default=None, help="ala2-5bead | residue | residue-com | ca")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--max-epochs", type=count(1), default=None)
    p.add_argument("--max-time", type=real(above=0), default=None,
                   help="training time budget in seconds")
    p.add_argument("--batch-size", type=count(1), default=None)
    p.add_argument("--lr", type=real(above=0), default=None)
    p.add_argument("--seed", type=count(0), default=None)
    p.add_argument("--stride", type=count(1), default=None)
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"])
    p.add_argument("--init-from", default=None, help="start from this back-mapping checkpoint's weights")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..cg.train import train_backmap

    try:
        train_backmap(args.config, progress=not args.no_progress, traj=args.traj, top=args.top,
                      map=args.map, out=args.out, max_epochs=args.max_epochs, max_time=args.max_time,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, stride=args.stride,
                      device=args.device, dtype=args.dtype, threads=args.threads,
                      init_from=args.init_from)
    except KeyboardInterrupt:
        print("eqgnn-train-backmap: interrupted; re-run the same command to resume from last.pt",
              file=sys.stderr)
        return 130
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
