"""A training run's folder: the guard on ``out``, atomic writes, ``config.yaml``, ``last.pt``, ``log.csv``.

Both trainers (potentials, :mod:`.trainer`; back-mapping, :mod:`ase_eqgnn.cg.train`) write only into
their run folder, only under their own names, and every file through a temporary name that is
``os.replace``-d over the final one, so a kill at any moment leaves old or new files, never half ones.

What an existing folder may hold (:meth:`RunDirectory.check`, before anything is read or written):

- nothing (or the folder does not exist): a new run;
- ``last.pt``: it must be a training state of the same kind whose config equals this run's, except
  for the keys that may change on resume and ``out`` itself (so ``run``, ``./run``, ``run/``, the
  absolute path and a folder moved elsewhere all resume the same run): the run continues from it;
- only ``config.yaml`` exactly as a trainer writes it (every key, machine-formatted) for this config,
  and temporaries: a run killed during its first epoch, which starts again;
- anything else (a hand-written ``config.yaml``, another model's ``best.pt``, notes, a finished run
  whose ``last.pt`` is gone): :class:`RunFolderError`, and nothing in the folder is touched.

Example
-------
>>> import tempfile, os
>>> out = os.path.join(tempfile.mkdtemp(), "run")
>>> run = RunDirectory(out, kind="example", config={"lr": 0.001, "out": out})
>>> run.check() is None               # a new run: nothing to resume
True
>>> run.prepare(); run.write_config()
>>> sorted(os.listdir(out))
['config.yaml']
>>> RunDirectory(out, "example", {"lr": 0.001, "out": out}).check() is None   # killed in epoch 1
True
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import yaml

from .resume import TrainStateError, config_differences, load_train_state, save_train_state

__all__ = ["RunDirectory", "RunFolderError", "atomic_output", "dump_config"]


class RunFolderError(ValueError):
    """The ``out`` folder holds files that are not this training run's; nothing was changed."""


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w", **open_kwargs) -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. ``mode="wb"``
    gives a binary file (for ``savefig``, pass ``format=`` since the temporary name ends in .tmp).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dump_config(config: Mapping[str, Any]) -> str:
    """The YAML text of a resolved config as the trainers write it (every key, in order)."""
    return yaml.safe_dump(dict(config), sort_keys=False)


class RunDirectory:
    """The folder ``out`` of one training run of ``kind`` (``"potential"``, ``"backmap"``, ...).

    Parameters
    ----------
    out : the run folder.
    kind : which trainer; a ``last.pt`` of another kind is refused.
    config : the run's resolved config (plain, YAML-able dict).
    mutable_keys : config keys that may differ when resuming (``out`` always may).
    outputs : the file names the run writes besides ``config.yaml``, ``last.pt`` and ``log.csv``
        (their stale temporaries are removed by :meth:`prepare`).
    """

    STATE, CONFIG, LOG = "last.pt", "config.yaml", "log.csv"

    def __init__(self, out: str, kind: str, config: Mapping[str, Any], mutable_keys: Iterable[str] = (),
                 outputs: Sequence[str] = ()):
        self.out = os.fspath(out)
        self.kind = kind
        self.config = dict(config)
        self.mutable_keys = frozenset(mutable_keys) | {"out"}
        self.names = (self.CONFIG, self.STATE, self.LOG, *outputs)
        self._temporary = re.compile(r"^(?:%s)\.[^/]+\.tmp$" % "|".join(map(re.escape, self.names)))

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    # ------------------------------------------------------------------ the guard
    def check(self, map_location="cpu") -> Optional[Dict[str, Any]]:
        """The training state to resume from (``last.pt`` read), or None for a fresh start.

        Raises :class:`RunFolderError` (or :class:`~.resume.TrainStateError` for a damaged or
        foreign ``last.pt``) when the folder is not this run's; reads only, writes nothing.
        """
        if os.path.lexists(self.out) and not os.path.isdir(self.out):  # a file, a broken link, ...
            raise RunFolderError(f"--out {self.out!r} exists and is not a folder; give a new or empty folder")
        entries = sorted(os.listdir(self.out)) if os.path.isdir(self.out) else []
        if not entries:
            return None
        if self.STATE in entries:
            return self._resumable_state(map_location)
        if self.CONFIG in entries and self._own_config() and \
                all(e == self.CONFIG or self._temporary.match(e) for e in entries):
            return None  # a run killed before its first last.pt: start it again
        foreign = [e for e in entries if not self._temporary.match(e)]
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        hint = (" (a finished or damaged run whose last.pt is missing is not overwritten)"
                if self.CONFIG in entries or "best.pt" in entries else "")
        raise RunFolderError(f"--out folder {self.out!r} already holds files that are not a {self.kind} "
                             f"training run of this config ({shown}){hint}; give a new or empty folder")

    def _resumable_state(self, map_location) -> Dict[str, Any]:
        last = self.path(self.STATE)
        state = load_train_state(last, map_location=map_location)
        kind = state.get("kind", "potential")  # files written before the back-mapping trainer joined
        if kind != self.kind:
            raise TrainStateError(f"{last} is the state of a {kind} training run, not of a {self.kind} "
                                  "run; give another --out folder")
        old = state["config"]
        diff = config_differences(old, self.config, self.mutable_keys)
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in diff)
            raise TrainStateError(
                f"{last} belongs to a run with a different config ({details}). Use another --out "
                "folder for a new run, or the same settings to resume this one.")
        return state

    def _own_config(self) -> bool:
        """config.yaml is one a trainer wrote (machine-formatted, every key) for this config."""
        try:
            with open(self.path(self.CONFIG)) as f:
                text = f.read()
            old = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return (isinstance(old, dict) and set(old) == set(self.config) and text == dump_config(old)
                and not config_differences(old, self.config, self.mutable_keys))

    # ------------------------------------------------------------------ writing
    def prepare(self) -> None:
        """Create the folder and delete temporaries a killed run left (never a finished file)."""
        os.makedirs(self.out, exist_ok=True)
        for name in os.listdir(self.out):
            if self._temporary.match(name):
                with contextlib.suppress(OSError):
                    os.unlink(self.path(name))

    def write_text(self, name: str, text: str) -> None:
        with atomic_output(self.path(name)) as f:
            f.write(text)

    def write_config(self) -> None:
        """``config.yaml``: the resolved config, every key."""
        self.write_text(self.CONFIG, dump_config(self.config))

    def save_state(self, state: Dict[str, Any]) -> None:
        """``last.pt`` (see :mod:`.resume`), with this run's kind and config added."""
        save_train_state({**state, "kind": self.kind, "config": self.config}, self.path(self.STATE))

    def write_log(self, history: Sequence[Mapping[str, float]], columns: Optional[Sequence[str]] = None
                  ) -> None:
        """``log.csv``: one row per epoch; ``columns`` default to every key in order of appearance.

        Missing and NaN values are empty cells; numbers are written with 6 significant digits.
        """
        if columns is None:
            columns = list(dict.fromkeys(k for row in history for k in row))
        with atomic_output(self.path(self.LOG), newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in history:
                writer.writerow([_cell(row.get(c)) for c in columns])


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return str(x) if isinstance(x, int) else f"{x:.6g}"

