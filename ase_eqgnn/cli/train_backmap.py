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

import argparse
import sys
from typing import List, Optional

from ..heap import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eqgnn-train-backmap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (keys of ase_eqgnn.cg.train.DEFAULT_CONFIG)")
    p.add_argument("--traj", nargs="+", default=None, help="all-atom trajectories (any mdtraj format)")
    p.add_argument("--top", default=None, help="topology for trajectories without one")
    p.add_argument("--map", default=None, help="ala2-5bead | residue | residue-com | ca")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--max-time", type=float, default=None, help="training time budget in seconds")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init-from", default=None, help="start from this back-mapping checkpoint's weights")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: reuse freed memory (ase_eqgnn.heap)
    try:
        from ..cg.train import train_backmap

        train_backmap(args.config, progress=not args.no_progress, traj=args.traj, top=args.top,
                      map=args.map, out=args.out, max_epochs=args.max_epochs, max_time=args.max_time,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, stride=args.stride,
                      device=args.device, dtype=args.dtype, threads=args.threads,
                      init_from=args.init_from)
    except (ValueError, FileNotFoundError) as err:
        print(f"eqgnn-train-backmap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eqgnn-train-backmap: interrupted; re-run the same command to resume from last.pt",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
