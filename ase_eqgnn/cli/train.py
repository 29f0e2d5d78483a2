"""``eqgnn-train``: train a potential from a YAML config and/or flags (thin front-end).

    eqgnn-train [CONFIG.yaml] [--data PATH] [--valid-fraction F] [--model NAME] [--out DIR]
                [--max-epochs N] [--max-time SECONDS] [--seed S] [--device D] ...

Every key of :class:`ase_eqgnn.train.TrainConfig` is also a flag (``_`` -> ``-``); flags win over the
file. Re-running the same command with the same ``--out`` resumes from ``out/last.pt``. Several
processes: ``torchrun --nproc_per_node K -m ase_eqgnn.cli.train ...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..train.config import add_config_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqgnn-train",
        description="Train an equivariant GNN potential on labelled frames (eV, Å). Writes "
                    "config.yaml, last.pt, best.pt, log.csv and PNG plots to --out; re-running "
                    "the same command resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config file (keys as the flags below)")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..train import train

        cfg = config_from_args(args, args.config)
        train(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"eqgnn-train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eqgnn-train: interrupted; re-run the same command to resume from last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
