"""``eqgnn-train``: train a potential from a YAML config and/or flags (thin front-end).

    eqgnn-train [CONFIG.yaml] [--data PATH] [--valid-fraction F] [--model NAME] [--out DIR]
                [--max-epochs N] [--max-time SECONDS] [--seed S] [--device D] [--threads N] ...

Every key of :class:`ase_eqgnn.train.TrainConfig` is also a flag (``_`` -> ``-``); flags win over the
file. Re-running the same command with the same ``--out`` resumes from ``out/last.pt``; an ``--out``
folder holding anything but this run is refused and left as it was. Several processes:
``torchrun --nproc_per_node K -m ase_eqgnn.cli.train ...``.

Exit codes: 0 done; 2 a mistake in the config, the flags, the data or the ``--out`` folder (one line
``eqgnn-train: error: ...`` on stderr, nothing written); 1 a run that failed after it started (its
``last.pt`` is kept: re-run to resume); 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..train.config import TrainConfig, add_config_arguments, config_from_args

PROG = "eqgnn-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train an equivariant GNN potential on labelled frames (eV, Å). Writes "
                    "config.yaml, last.pt, best.pt, log.csv and PNG plots to --out; re-running "
                    "the same command resumes.")
    parser.add_argument("config", nargs="?", help="YAML config file (keys as the flags below)")
    add_config_arguments(parser)
    return parser


def _one_line(err: BaseException) -> str:
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..train import Trainer

        # The command owns its process, so it keeps freed memory for reuse (ase_eqgnn.heap) unless
        # the config or --no-keep-freed-memory says otherwise; the library default is off.
        cfg = config_from_args(args, args.config, defaults=TrainConfig(keep_freed_memory=True))
        trainer = Trainer(cfg)
    except (ValueError, OSError) as err:  # the config, the data or the --out folder: nothing written
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: not enough memory to read the data and build the model; use fewer or "
              "smaller frames (--index), a smaller model or a smaller cutoff", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before training started", file=sys.stderr)
        return 130
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; re-run the same command to resume from last.pt", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {_one_line(err)} (the run folder {cfg.out!r} keeps its last.pt: re-run "
              "the same command to resume)", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
