"""Checks for an MD run or a relaxation: its arguments and starting structure (a user's mistake,
``ValueError``), and the failures that stop a run that has started (the physics).

A run that has started stops when :class:`SimulationBlewUp` (non-finite forces, a temperature
run-away, atoms flying apart), :class:`~ase_eqgnn.errors.AtomsTooCloseError` (a collision) or
:class:`~ase_eqgnn.errors.OutOfDomainError` (closer than the model's training data went) is raised;
:func:`physics_stop` names the reason, or returns None for an error that is not the physics'.

Example
-------
>>> from ase.build import molecule
>>> check_structure(molecule("H2O"))
>>> check_structure(molecule("H2O"), periodic_cell=True, what="NPT")
Traceback (most recent call last):
ValueError: NPT needs a cell periodic in all three directions with a volume (this structure has pbc=[False, False, False], volume 0 Å^3)
>>> check_md_arguments("nvt", float("nan"), 0.5, 10, 0.01, 1.0, 1, 0)
Traceback (most recent call last):
ValueError: temperature must be a number from 0 to 1e+06 K, got nan
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

import numpy as np
from ase import Atoms

from .errors import AtomsTooCloseError, OutOfDomainError

ENSEMBLES = ("nve", "nvt", "npt")
#: Above this no interatomic potential means anything (atoms cross a bond length within a time step),
#: and velocities at 1e200 K overflow the positions in the first step.
MAX_TEMPERATURE_K = 1e6


class SimulationBlewUp(RuntimeError):
    """The simulation left physical territory; the message says how and at which step."""


#: Exceptions that end a run that has started because of where the physics took it.
PHYSICS_STOPS = (SimulationBlewUp, AtomsTooCloseError, OutOfDomainError)


def physics_stop(err: BaseException, atoms: Atoms, step: int) -> Optional[str]:
    """The reason a run stopped at ``step`` when ``err`` was raised by the physics, else None."""
    if isinstance(err, SimulationBlewUp):
        return str(err)
    if isinstance(err, AtomsTooCloseError):
        return f"atoms collided at step {step} ({err})"
    if isinstance(err, OutOfDomainError):
        return f"the structure left the model's training domain at step {step} ({err})"
    if isinstance(err, ValueError):  # the calculator refusing a structure the run has ruined
        if not np.isfinite(atoms.positions).all():
            return f"positions became non-finite at step {step} (the integration diverged)"
        if atoms.pbc.any() and not (np.isfinite(atoms.cell[:]).all() and abs(atoms.cell.volume) > 1e-6):
            return f"the cell collapsed or diverged at step {step} ({err})"
    return None


def check_finite(atoms: Atoms, step: int) -> None:
    """SimulationBlewUp when the forces of the current step are not finite."""
    if not np.isfinite(atoms.get_forces()).all():
        raise SimulationBlewUp(f"non-finite forces at step {step}")


def _is_real(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x, minimum: int) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool) and x >= minimum


def check_md_arguments(ensemble: str, temperature_K, timestep_fs, steps, friction_per_fs,
                       pressure_bar, interval, seed, max_temperature_K=None) -> None:
    """ValueError naming the first argument of :func:`run_md` that cannot run."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if not (_is_real(temperature_K) and 0 <= temperature_K <= MAX_TEMPERATURE_K):
        raise ValueError(f"temperature must be a number from 0 to {MAX_TEMPERATURE_K:g} K, got "
                         f"{temperature_K!r}")
    if ensemble == "npt" and temperature_K <= 0:
        raise ValueError("NPT needs a temperature > 0 K (its thermostat mass is proportional to T)")
    if not (_is_real(timestep_fs) and timestep_fs > 0):
        raise ValueError(f"timestep must be a finite number > 0 fs, got {timestep_fs!r}")
    if not _is_count(steps, 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not _is_count(interval, 1):
        raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
    if not (_is_real(friction_per_fs) and friction_per_fs >= 0):
        raise ValueError(f"friction must be a finite number >= 0 (1/fs), got {friction_per_fs!r}")
    if not _is_real(pressure_bar):
        raise ValueError(f"pressure must be a finite number (bar), got {pressure_bar!r}")
    if not _is_count(seed, 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if max_temperature_K is not None and not (_is_real(max_temperature_K) and max_temperature_K > 0):
        raise ValueError(f"max_temperature_K must be a finite number > 0, got {max_temperature_K!r}")


def check_relax_arguments(fmax, steps) -> None:
    """ValueError naming the first argument of :func:`~ase_eqgnn.simulate.relax` that cannot run."""
    if not (_is_real(fmax) and fmax > 0):
        raise ValueError(f"fmax must be a finite number > 0 (eV/Å), got {fmax!r}")
    if not _is_count(steps, 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


def check_structure(atoms: Atoms, periodic_cell: bool = False, what: str = "this run") -> None:
    """ValueError when ``atoms`` cannot start a run: no atoms, non-finite positions, cell, momenta
    or masses, masses <= 0; with ``periodic_cell`` also a cell that is not periodic in 3-D with a
    volume."""
    if not isinstance(atoms, Atoms):
        raise ValueError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("the structure has no atoms")
    for name, values in (("positions", atoms.positions), ("momenta", atoms.get_momenta()),
                         ("masses", atoms.get_masses())):
        bad = ~np.isfinite(values).reshape(len(atoms), -1).all(axis=1)
        if bad.any():
            raise ValueError(f"the structure's {name} contain NaN or infinite values "
                             f"(atoms {np.nonzero(bad)[0][:5].tolist()})")
    if (atoms.get_masses() <= 0).any():
        raise ValueError(f"the structure has masses <= 0 (atoms "
                         f"{np.nonzero(atoms.get_masses() <= 0)[0][:5].tolist()})")
    if atoms.pbc.any() and not np.isfinite(atoms.cell[:]).all():
        raise ValueError("the structure's cell contains NaN or infinite values")
    if periodic_cell and not (atoms.pbc.all() and abs(atoms.cell.volume) > 1e-6):
        raise ValueError(f"{what} needs a cell periodic in all three directions with a volume "
                         f"(this structure has pbc={atoms.pbc.tolist()}, volume "
                         f"{abs(atoms.cell.volume):.3g} Å^3)")


__all__ = ["ENSEMBLES", "MAX_TEMPERATURE_K", "SimulationBlewUp", "PHYSICS_STOPS", "physics_stop", "check_finite",
           "check_md_arguments", "check_relax_arguments", "check_structure"]
