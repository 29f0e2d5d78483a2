"""What an MD run writes as it goes: trajectory frames, log rows, and the plot at the end.

The writers are ASE dynamics observers (``dyn.attach(writer, interval=...)``) that write to a path
they are given (a temporary file of :class:`ase_eqgnn.outputs.OutputFiles`) and pick the format from
the name the user asked for:

========================  ==============================================================
final name                format
========================  ==============================================================
``*.traj``                ASE trajectory (:class:`ase.io.Trajectory`, with energies, forces)
``*.xyz``, ``*.extxyz``   extended XYZ, one frame after another (with energies, forces)
``*.csv``                 CSV: step, time_fs, epot_eV, ekin_eV, etot_eV, temperature_K,
                          volume_A3 (NaN without a 3-D periodic cell)
``*.log``, ``*.txt``      ASE's :class:`~ase.md.logger.MDLogger` table (time in ps, eV, K)
========================  ==============================================================

Example
-------
>>> import os, tempfile
>>> from ase.build import bulk
>>> from ase.calculators.emt import EMT
>>> from ase.md.verlet import VelocityVerlet
>>> from ase import units
>>> atoms = bulk("Cu", cubic=True)
>>> atoms.calc = EMT()
>>> dyn = VelocityVerlet(atoms, 1 * units.fs)
>>> path = os.path.join(tempfile.mkdtemp(), "md.csv")
>>> log = LogWriter(path, path, dyn, atoms, timestep_fs=1.0)
>>> dyn.attach(log, interval=5)
>>> dyn.run(10)
True
>>> log.close()
>>> [line.split(",")[0] for line in open(path)]
['step', '0', '5', '10']
"""

from __future__ import annotations

import csv
import os

import numpy as np
from ase import Atoms

TRAJECTORY_SUFFIXES = (".traj", ".xyz", ".extxyz")
LOG_SUFFIXES = (".csv", ".log", ".txt")
CSV_COLUMNS = ("step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K", "volume_A3")


def _suffix(name: str) -> str:
    return os.path.splitext(os.fspath(name))[1].lower()


class FrameWriter:
    """Observer writing the current frame to ``path`` in the format of ``name``'s extension."""

    def __init__(self, path: str, atoms: Atoms, name: str) -> None:
        self.atoms = atoms
        if _suffix(name) == ".traj":
            from ase.io import Trajectory

            self._traj, self._file = Trajectory(path, "w", atoms), None
        else:
            self._traj, self._file = None, open(path, "w")

    def __call__(self) -> None:
        if self._traj is not None:
            self._traj.write()
        else:
            from ase.io import write

            write(self._file, self.atoms, format="extxyz")
            self._file.flush()

    def close(self) -> None:
        for handle in (self._traj, self._file):
            if handle is not None:
                handle.close()


class LogWriter:
    """Observer writing one log row to ``path``: CSV (:data:`CSV_COLUMNS`) for a ``.csv`` ``name``,
    ASE's :class:`~ase.md.logger.MDLogger` table for ``.log``/``.txt``."""

    def __init__(self, path: str, name: str, dyn, atoms: Atoms, timestep_fs: float) -> None:
        self.dyn, self.atoms, self.timestep_fs = dyn, atoms, timestep_fs
        self._file = open(path, "w", newline="")
        self._csv = None
        self._logger = None
        if _suffix(name) == ".csv":
            self._csv = csv.writer(self._file)
            self._csv.writerow(CSV_COLUMNS)
        else:
            from ase.md import MDLogger

            self._logger = MDLogger(dyn, atoms, self._file, header=True, mode="w")

    def __call__(self) -> None:
        if self._logger is not None:
            self._logger()
            return
        atoms, step = self.atoms, self.dyn.nsteps
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        row = (step, step * self.timestep_fs, epot, ekin, epot + ekin, atoms.get_temperature(),
               atoms.get_volume() if atoms.pbc.all() else float("nan"))
        self._csv.writerow([f"{x:.10g}" if isinstance(x, float) else x for x in row])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_md(data: np.ndarray, path: str, title: str = "", fmt: str = "png") -> None:
    """Energies and temperature against time; ``data`` rows as :data:`CSV_COLUMNS`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    data = np.asarray(data, dtype=float).reshape(-1, len(CSV_COLUMNS))
    t = data[:, 1] / 1000.0
    style = {"marker": "o"} if len(data) < 3 else {}  # a lone point is visible too
    for col, label in ((2, "potential"), (4, "total")):
        ax1.plot(t, data[:, col] - (data[0, col] if len(data) else 0.0), label=label, **style)
    ax1.set_ylabel("E - E(0) (eV)")
    ax1.legend()
    ax2.plot(t, data[:, 5], color="C3", **style)
    ax2.set_ylabel("temperature (K)")
    ax2.set_xlabel("time (ps)")
    ax1.set_title(title.upper())
    fig.tight_layout()
    fig.savefig(path, dpi=100, format=fmt)
    plt.close(fig)


def structure_format(name: str) -> str:
    """The ASE format that writes a structure file called ``name``; ValueError if none does."""
    from ase.io.formats import filetype, ioformats

    try:
        fmt = filetype(os.fspath(name), read=False)
    except Exception:  # ASE raises several types for names it cannot place
        fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise ValueError(f"ASE cannot write a structure file called {os.fspath(name)!r}: use an "
                         "extension such as .xyz, .extxyz, .traj, .cif, .pdb or .vasp")
    return fmt


__all__ = ["TRAJECTORY_SUFFIXES", "LOG_SUFFIXES", "CSV_COLUMNS", "FrameWriter", "LogWriter", "plot_md",
           "structure_format"]
