"""Output files that appear complete or not at all: what a failed run leaves is what was there.

A run that writes a trajectory, a log and a plot can fail at many points: a bad input found late, an
exception in the middle, Ctrl-C, a full disk. :class:`OutputFiles` gives each output a temporary
name in the folder of its final name (``.md.traj.<random>.partial.traj``: hidden, and ending in the
same extension, so writers that pick the format from the name still do) and moves it into place with
``os.replace`` only when the run asks for it (:meth:`OutputFiles.commit`). ``os.replace`` within one
folder is atomic on POSIX and Windows: a reader sees the old file or the new one, never a mixture.
Leaving the ``with`` block removes every temporary file not committed, and the folders that
:meth:`OutputFiles.start` created for them, so a failed run changes nothing. A file that streams
(an MD trajectory) can be moved into place early with :meth:`OutputFiles.promote`, once the run has
really started, so that a killed run still leaves the frames written so far.

:meth:`OutputFiles.add` checks a planned output before anything is written: not a folder, not one of
the run's inputs, not the same file as another output, an allowed extension, and a folder that exists
(or can be made) and is writable.

Example
-------
>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = os.path.join(folder, "energies.txt")
>>> with OutputFiles() as outputs:
...     _ = outputs.add(path, "energy table", suffixes=(".txt",))
...     with open(outputs.start(path), "w") as f:
...         _ = f.write("1.0\\n")
...     os.path.exists(path)           # nothing under the final name yet
...     outputs.commit() == [path]
False
True
>>> open(path).read()
'1.0\\n'
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["OutputFiles", "check_output_path", "write_text"]

_NEW_FILE_MODE = 0o644  # mkstemp makes 0600; an output is an ordinary readable file


def _identity(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def check_output_path(path, what: str = "output", suffixes: Optional[Sequence[str]] = None) -> str:
    """``path`` as a string after checking that a file can be written there; ValueError otherwise.

    ``suffixes``: the allowed extensions (lower case, with the dot); None allows any.
    """
    if path is None or not str(path).strip():
        raise ValueError(f"the {what} path is empty")
    path = os.fspath(path)
    name = os.path.basename(path)
    if not name or name in (".", ".."):
        raise ValueError(f"the {what} path {path!r} names a folder, not a file")
    if os.path.isdir(path):
        raise ValueError(f"the {what} path {path!r} is a folder; give a file name")
    if suffixes is not None:
        suffix = os.path.splitext(name)[1].lower()
        if suffix not in suffixes:
            raise ValueError(f"unsupported {what} extension {suffix or '(none)'!r} in {path!r}; use "
                             + ", ".join(suffixes))
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot write the {what} {path!r}: {existing!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the {what} {path!r}: no write permission in {existing!r}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"the {what} path {path!r} exists and is not a regular file")
    return path


class OutputFiles:
    """A run's output files, written under temporary names and moved into place by :meth:`commit`.

    ``inputs``: files the run reads; an output with the same identity is refused (a run must not
    replace what it reads, e.g. ``eqgnn-md md.traj`` with the default ``--traj md.traj``).
    """

    def __init__(self, inputs: Iterable = ()) -> None:
        self._inputs = {_identity(os.fspath(p)): os.fspath(p) for p in inputs if p is not None}
        self._planned: Dict[str, str] = {}  # final path -> what
        self._identities: Dict[str, str] = {}  # identity -> final path
        self._temporary: Dict[str, str] = {}  # final path -> temporary path
        self._made_folders: List[str] = []
        self.written: List[str] = []  # final paths moved into place, in order

    # ------------------------------------------------------------------ planning
    def add(self, path, what: str = "output", suffixes: Optional[Sequence[str]] = None) -> str:
        """Check and register one output (see :func:`check_output_path`); returns the path."""
        path = check_output_path(path, what, suffixes)
        ident = _identity(path)
        if ident in self._inputs:
            raise ValueError(f"the {what} {path!r} is also an input of this run; writing it would "
                             "replace what the run reads: give another name")
        if ident in self._identities:
            other = self._identities[ident]
            raise ValueError(f"the {what} and the {self._planned[other]} are the same file {path!r}; "
                             "give them different names")
        self._planned[path] = what
        self._identities[ident] = path
        return path

    @property
    def planned(self) -> List[str]:
        return list(self._planned)

    # ------------------------------------------------------------------ writing
    def start(self, path) -> str:
        """A new empty temporary file beside the planned output ``path`` (same extension): write
        the output there. Creates missing folders (removed again if the run fails)."""
        path = os.fspath(path)
        if path not in self._planned:
            raise ValueError(f"{path!r} was not planned as an output (call add() first)")
        if path in self._temporary:
            return self._temporary[path]
        folder = os.path.dirname(os.path.abspath(path))
        self._make_folders(folder)
        name = os.path.basename(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial" + os.path.splitext(name)[1],
                                   dir=folder)
        os.close(fd)
        mode = _NEW_FILE_MODE
        if os.path.isfile(path):  # a replaced file keeps its permissions
            mode = stat.S_IMODE(os.stat(path).st_mode)
        os.chmod(tmp, mode)
        self._temporary[path] = tmp
        return tmp

    def started(self, path) -> bool:
        return os.fspath(path) in self._temporary

    def commit(self, paths: Optional[Iterable] = None) -> List[str]:
        """Move the temporary files of ``paths`` (default: all started ones) into place; returns the
        final paths now written."""
        chosen = list(self._temporary) if paths is None else [os.fspath(p) for p in paths]
        done = []
        for path in chosen:
            tmp = self._temporary.pop(path, None)
            if tmp is None:
                continue
            with open(tmp, "rb") as f:  # the data on disk before the name points at it
                os.fsync(f.fileno())
            os.replace(tmp, path)
            done.append(path)
            self.written.append(path)
        if done:
            self._made_folders = []  # they hold outputs now
        return done

    def promote(self, path) -> None:
        """Move a file that is still being written (a streamed trajectory) into place now: from here
        on a kill, even SIGKILL, leaves what was written so far under its final name. Writers that
        hold the file open go on writing to it (POSIX keeps an open file across a rename; where the
        system refuses, the file stays temporary until :meth:`commit`)."""
        path = os.fspath(path)
        if path not in self._temporary:
            return
        try:
            self.commit([path])
        except PermissionError:  # Windows cannot rename a file that is open
            pass

    def discard(self) -> None:
        """Remove every temporary file not committed and the folders made for them (if empty)."""
        for tmp in self._temporary.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._temporary.clear()
        for folder in reversed(self._made_folders):
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._made_folders = []

    def _make_folders(self, folder: str) -> None:
        missing = []
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for made in reversed(missing):
            os.mkdir(made)
            self._made_folders.append(made)

    def __enter__(self) -> "OutputFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def write_text(path, text: str, inputs: Iterable = (), what: str = "output") -> None:
    """Write ``text`` to ``path`` through a temporary file: the old content or the new, never half."""
    with OutputFiles(inputs) as outputs:
        outputs.add(path, what)
        with open(outputs.start(path), "w") as f:
            f.write(text)
        outputs.commit()
