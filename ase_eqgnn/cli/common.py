"""What every ``eqgnn-*`` command shares: one-line errors, exit codes, checked arguments, ``--threads``.

Exit codes (``docs/reliability.md``):

====  ==========================================================================================
0     done
1     finished without reaching its goal (``eqgnn-relax`` not converged within ``--steps``)
2     a user error: bad arguments, unreadable input, a model that cannot be used; nothing written
3     a run stopped by the physics (blow-up, collision, out of the model's domain); what was
      written so far is kept and named in the message
130   interrupted (Ctrl-C); an MD run or relaxation keeps what it wrote so far
143   terminated by SIGTERM (e.g. a batch system's time limit); the same as Ctrl-C
====  ==========================================================================================

A command is a parser from :func:`command_parser` and a function ``body(args) -> int`` run through
:func:`run_command`, which turns a user's mistake into one line ``eqgnn-xxx: error: ...`` on stderr
and exit code 2 instead of a traceback.

Example
-------
>>> parser = command_parser("eqgnn-demo", "Demo.")
>>> _ = parser.add_argument("--steps", type=count(0), default=10)
>>> run_command(parser, lambda args: 0 if args.steps == 3 else 1, ["--steps", "3"])
0
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Callable, Optional, Sequence

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_USER_ERROR, EXIT_PHYSICS_STOP = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM
MAX_THREADS = 1024


class CommandParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line: ``prog: error: message (see prog --help)``, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help unless the help already states its default
    in words (``--threads``: "torch's choice"), which would otherwise be followed by "None"."""

    def _get_help_string(self, action):
        if "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def command_parser(prog: str, description: str, defaults_in_help: bool = False) -> CommandParser:
    """A :class:`CommandParser` with ``--threads`` (every command owns its process)."""
    formatter = (DefaultsHelpFormatter if defaults_in_help
                 else argparse.RawDescriptionHelpFormatter)
    parser = CommandParser(prog=prog, description=description, formatter_class=formatter)
    parser.add_argument("--threads", type=count(1, MAX_THREADS), default=None, metavar="N",
                        help="torch threads for this process (default: torch's choice, one per "
                             "core; on a shared machine or with several processes per machine, "
                             "set it to the cores this process may use)")
    return parser


def one_line(message) -> str:
    """``message`` as one line of at most 600 characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= 600 else text[:597] + "..."


# ------------------------------------------------------------------------------ argument types
def real(minimum: Optional[float] = None, above: Optional[float] = None,
         maximum: Optional[float] = None) -> Callable[[str], float]:
    """argparse type: a finite float, optionally ``>= minimum``, ``> above``, ``<= maximum``."""
    bound = " and ".join(f"{op} {value:g}" for op, value in ((">=", minimum), (">", above),
                                                              ("<=", maximum)) if value is not None)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum) or \
                (above is not None and value <= above) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + bound if bound else ''}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def count(minimum: int = 0, maximum: Optional[int] = None) -> Callable[[str], int]:
    """argparse type: an integer within ``[minimum, maximum]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}{upper}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def device(text: str) -> str:
    """argparse type: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available), checked to exist."""
    import torch

    from ..train.distributed import resolve_device

    try:
        dev = resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported; use cpu, cuda, cuda:N "
                                         "or auto")
    if dev.type == "cuda" and torch.cuda.device_count() == 0:  # resolve_device checked this too
        raise argparse.ArgumentTypeError("no CUDA device")
    return str(dev)


def existing_file(what: str) -> Callable[[str], str]:
    """argparse type: the path of an existing regular file."""
    def parse(text: str) -> str:
        if not os.path.exists(text):
            raise argparse.ArgumentTypeError(f"{what} {text!r} does not exist")
        if not os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"{what} {text!r} is not a file")
        return text

    parse.__name__ = "file"
    return parse


# ------------------------------------------------------------------------------ running
def read_structure(path: str):
    """The last frame of a structure file ASE reads; ValueError with a one-line reason otherwise."""
    from ase.io import read

    if not os.path.isfile(path):
        raise ValueError(f"structure file {path!r} does not exist" if not os.path.exists(path)
                         else f"structure {path!r} is not a file")
    try:
        atoms = read(path)
    except Exception as err:  # ASE's readers raise a dozen types for a file they cannot parse
        raise ValueError(f"cannot read structure file {path!r}: {type(err).__name__}: "
                         f"{one_line(err) or 'unreadable'}") from None
    if isinstance(atoms, list):  # some readers return every frame
        if not atoms:
            raise ValueError(f"structure file {path!r} holds no structure")
        atoms = atoms[-1]
    return atoms


def run_command(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]] = None, owns_heap: bool = True) -> int:
    """Parse ``argv``, set up the process (``--threads``, the heap) and run ``body``; a user's
    mistake (``ValueError``, ``OSError``, the calculator's errors) becomes one line on stderr and
    exit code 2, Ctrl-C exit code 130."""
    args = parser.parse_args(argv)
    prog = parser.prog
    previous = _catch_sigterm()
    try:
        if getattr(args, "threads", None) is not None:
            import torch

            torch.set_num_threads(args.threads)  # the command owns its process
        if owns_heap:
            from ..heap import keep_freed_memory

            keep_freed_memory()  # reuse freed memory between calls (see ase_eqgnn.heap)
        return body(args)
    except KeyboardInterrupt as err:
        summary = getattr(err, "summary", None)  # set by run_md / relax: what they kept
        kept = f"; kept {kept_files_message(summary.files)}" if summary is not None else ""
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"{prog}: {what}{kept}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"{prog}: error: {one_line(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``): stops a command as Ctrl-C does, so that
    a run keeps what it wrote so far and leaves no temporary file."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm():
    """Turn SIGTERM into :class:`Terminated` for the command's lifetime; the previous handler (None
    where signals cannot be set, outside the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, AttributeError, OSError):
        return None


def is_user_error(err: BaseException) -> bool:
    """A failure the user can fix: a bad value or file, a model or structure that does not fit."""
    from ..errors import OutOfDomainError

    return isinstance(err, (ValueError, OSError, OutOfDomainError, MemoryError))


def calculator_options(allow_out_of_domain: bool) -> dict:
    """Keyword arguments for :class:`~ase_eqgnn.calculator.EqGNNCalculator` that the commands pass:
    the out-of-domain check raises (or, with ``--allow-out-of-domain``, warns)."""
    return {"domain_check": "warn" if allow_out_of_domain else "raise"}


def kept_files_message(files: dict) -> str:
    return ", ".join(files.values()) if files else "no files"


def end_of_run(prog: str, summary, json_path, inputs, stopped: str) -> bool:
    """The shared end of an MD or relaxation command: the summary JSON (when asked for) joins the
    run's outputs; a run the physics stopped gets one line on stderr naming what was kept
    (``stopped`` says how far it got). True when the run completed."""
    if json_path:
        from ..outputs import write_text

        write_text(json_path, json_text(summary.as_dict()), inputs, "summary JSON")
        summary.files["json"] = json_path
    if not summary.completed:
        print(f"{prog}: {summary.message}{stopped}; kept {kept_files_message(summary.files)}",
              file=sys.stderr)
    return bool(summary.completed)


def json_text(data: dict) -> str:
    """``data`` as strict JSON: NaN and infinities become null."""
    import json

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=1, allow_nan=False) + "\n"


__all__ = ["CommandParser", "command_parser", "one_line", "real", "count", "device", "existing_file",
           "read_structure", "run_command", "is_user_error", "calculator_options", "EXIT_OK",
           "EXIT_NOT_CONVERGED", "EXIT_USER_ERROR", "EXIT_PHYSICS_STOP", "EXIT_INTERRUPTED", "EXIT_TERMINATED",
           "Terminated",
           "kept_files_message", "json_text", "end_of_run"]
