"""Molecular dynamics and relaxations with ASE's drivers: what ``eqgnn-md`` and ``eqgnn-relax`` run.

:func:`run_md` runs NVE (velocity Verlet), NVT (Langevin) or NPT (isotropic MTK) dynamics. ASE
observers attached to the dynamics (``dyn.attach``) write the trajectory (ASE ``.traj`` or extended
XYZ), the log (CSV, or ASE's :class:`~ase.md.logger.MDLogger` text for ``.log``/``.txt``) and watch
for a blow-up (non-finite forces, a temperature run-away, atoms flying apart). It returns a summary:
the energy drift for NVE (meV/atom/ps, from a linear fit of the total energy against time), the mean
and spread of the temperature otherwise. A plot of energies and temperature is written at the end.

:func:`relax` relaxes positions (and the cell through ``FrechetCellFilter``) with BFGS or FIRE.

How they fail (the rows of ``docs/reliability.md``):

- Every argument, every output path and the starting structure (elements, overlaps, non-finite
  energies) are checked before anything is written; a problem is a ``ValueError`` naming it (or the
  calculator's :class:`~ase_eqgnn.errors.OutOfDomainError`), and no file changes.
- Outputs are written under temporary names beside their final names (:mod:`ase_eqgnn.outputs`).
  A run that fails before its first step leaves every existing file as it was.
- From the first step on the run has really started: the trajectory and log stream under their
  final names (:meth:`~ase_eqgnn.outputs.OutputFiles.promote`), so even a killed run leaves its
  frames. The plot and the relaxed structure are written at the end.
- A run stopped by the physics (:class:`~ase_eqgnn.run_checks.SimulationBlewUp`, or the
  calculator's :class:`~ase_eqgnn.errors.AtomsTooCloseError` /
  :class:`~ase_eqgnn.errors.OutOfDomainError` after the start) returns a summary with
  ``completed=False`` and the reason in ``message``; ``summary.files`` names what was kept. Ctrl-C
  keeps the same files and raises the ``KeyboardInterrupt`` again, with the summary as its
  ``summary`` attribute.

Units: fs, K, bar at the interface; eV, Å inside (ASE's).

Example
-------
>>> from ase.build import bulk
>>> from ase.calculators.emt import EMT
>>> atoms = bulk("Cu", cubic=True).repeat(2)
>>> summary = run_md(atoms, EMT(), "nve", temperature_K=300, steps=20, interval=10, traj=None,
...                  log=None, plot=None, progress=False)
>>> summary.completed, summary.steps, abs(summary.energy_drift_meV_per_atom_per_ps) < 50
(True, 20, True)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from ase import Atoms, units
from ase.constraints import FixCom
from ase.filters import FrechetCellFilter
from ase.io import Trajectory, write
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from .md_output import (LOG_SUFFIXES, TRAJECTORY_SUFFIXES, FrameWriter, LogWriter, plot_md,
                        structure_format)
from .neighbors import neighbor_list
from .outputs import OutputFiles
from .run_checks import (ENSEMBLES, PHYSICS_STOPS, SimulationBlewUp, check_finite, check_md_arguments,
                         check_relax_arguments, check_structure, physics_stop)

OPTIMIZERS = {"bfgs": BFGS, "fire": FIRE}
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
# ASE 3.29 deprecates MaxwellBoltzmannDistribution for thermalize_momenta; older ASE has only the first.
_thermalize_momenta = getattr(velocitydistribution, "thermalize_momenta", None)


# ---------------------------------------------------------------------------------------- dynamics
def isolated_atoms(atoms: Atoms, radius: float) -> np.ndarray:
    """Indices of atoms with no neighbour within ``radius`` (Å)."""
    if len(atoms) < 2:
        return np.arange(len(atoms))
    i, _, _ = neighbor_list(torch.tensor(atoms.positions), radius, torch.tensor(atoms.cell[:]),
                            atoms.pbc)
    has = np.zeros(len(atoms), dtype=bool)
    has[i.numpy()] = True
    return np.nonzero(~has)[0]


def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at ``temperature_K`` without net momentum (nor net rotation for
    an isolated structure of two or more atoms); a single atom is left at rest."""
    if _thermalize_momenta is not None:
        _thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        velocitydistribution.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    # A single atom at rest has no temperature to restore: rescaling to it (ASE's default) gives NaN.
    velocitydistribution.Stationary(atoms, preserve_temperature=len(atoms) > 1)
    if not atoms.pbc.any() and len(atoms) > 1:  # and so would ZeroRotation
        with np.errstate(invalid="ignore", divide="ignore"):  # a linear molecule's zero moment
            velocitydistribution.ZeroRotation(atoms)


def langevin_nvt(atoms: Atoms, timestep_fs: float, temperature_K: float, friction_per_fs: float,
                 rng: np.random.Generator) -> Langevin:
    """Langevin NVT whose centre of mass is held by a ``FixCom`` constraint (added to ``atoms``).

    Not Langevin's ``fixcm=True``: that runs small molecules hot (ala2, 22 atoms: 350 K instead of
    300 K over 2 ps), as ASE warns.
    """
    if not any(isinstance(c, FixCom) for c in atoms.constraints):
        atoms.set_constraint(list(atoms.constraints) + [FixCom()])
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                    friction=friction_per_fs / units.fs, rng=rng, fixcm=False)


def make_dynamics(atoms: Atoms, ensemble: str, temperature_K: float, timestep_fs: float,
                  friction_per_fs: float, pressure_bar: float, rng: np.random.Generator):
    """The ASE dynamics of ``ensemble``, with Maxwell-Boltzmann velocities unless ``atoms`` moves."""
    if ensemble == "nvt" and len(atoms) == 1:
        raise ValueError("NVT of a single atom: its centre of mass is held, so nothing can move; "
                         "use a larger structure (e.g. atoms.repeat) or NVE")
    if not np.any(atoms.get_momenta()):
        thermalize(atoms, temperature_K, rng)
        if not np.isfinite(atoms.get_momenta()).all():
            raise ValueError(f"Maxwell-Boltzmann velocities at {temperature_K:g} K are not finite "
                             "numbers: give a lower temperature")
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
    elif ensemble == "nvt":
        dyn = langevin_nvt(atoms, timestep_fs, temperature_K, friction_per_fs, rng)
    else:
        dyn = IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K,
                              pressure_au=pressure_bar * units.bar, tdamp=100 * dt, pdamp=1000 * dt)
    if atoms.get_number_of_degrees_of_freedom() <= 0:  # e.g. every atom fixed by a constraint
        raise ValueError(f"{ensemble.upper()} MD of this structure has no degree of freedom left "
                         f"(constraints: {[type(c).__name__ for c in atoms.constraints]}); nothing "
                         "can move")
    return dyn


@dataclass
class MDSummary:
    ensemble: str
    steps: int
    timestep_fs: float
    n_atoms: int
    completed: bool
    message: str = ""
    temperature_mean_K: float = float("nan")
    temperature_std_K: float = float("nan")
    energy_drift_meV_per_atom_per_ps: float = float("nan")
    steps_per_second: float = float("nan")
    files: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def run_md(atoms: Atoms, calculator, ensemble: str = "nvt", temperature_K: float = 300.0,
           timestep_fs: float = 0.5, steps: int = 1000, friction_per_fs: float = 0.01,
           pressure_bar: float = 1.0, traj: Optional[str] = "md.traj", log: Optional[str] = "md.csv",
           plot: Optional[str] = "md.png", interval: int = 10, seed: int = 0,
           max_temperature_K: Optional[float] = None, progress: bool = True,
           inputs: tuple = ()) -> MDSummary:
    """Run MD with ``calculator`` on ``atoms`` (modified in place); see the module docstring.

    ``interval``: steps between trajectory frames, log rows and blow-up checks (the last step is
    always recorded). Velocities are drawn from Maxwell–Boltzmann at ``temperature_K`` unless
    ``atoms`` already carries momenta. ``max_temperature_K`` (default: max(10 × temperature,
    2000 K)) stops a run-away. ``inputs``: files the caller read (no output may replace one).
    Raises ``ValueError`` for bad arguments or a starting structure the calculator refuses, before
    any file is written.
    """
    check_md_arguments(ensemble, temperature_K, timestep_fs, steps, friction_per_fs, pressure_bar,
                       interval, seed, max_temperature_K)
    check_structure(atoms, periodic_cell=ensemble == "npt", what=f"{ensemble.upper()} MD")
    outputs = OutputFiles(inputs)
    for path, what, suffixes in ((traj, "trajectory", TRAJECTORY_SUFFIXES), (log, "log", LOG_SUFFIXES),
                                 (plot, "plot", PLOT_SUFFIXES)):
        if path:
            outputs.add(path, what, suffixes)
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    dyn = make_dynamics(atoms, ensemble, temperature_K, timestep_fs, friction_per_fs, pressure_bar,
                        rng)
    max_t = max(10 * temperature_K, 2000.0) if max_temperature_K is None else max_temperature_K
    cutoff = float(getattr(calculator, "cutoff", 5.0))
    isolated_at_start = set(isolated_atoms(atoms, cutoff).tolist())
    volume_at_start = atoms.get_volume() if ensemble == "npt" else None
    rows = []

    def check(step: int, epot: float, temp: float) -> None:
        if not (np.isfinite(epot) and np.isfinite(atoms.get_forces()).all()):
            raise SimulationBlewUp(f"non-finite energy or forces at step {step}")
        if temp > max_t:
            raise SimulationBlewUp(f"temperature ran away to {temp:.0f} K at step {step} "
                                   f"(limit {max_t:.0f} K)")
        if volume_at_start and not 0.1 < atoms.get_volume() / volume_at_start < 10.0:
            raise SimulationBlewUp(f"the cell volume ran away to {atoms.get_volume():.4g} Å^3 at "
                                   f"step {step} (from {volume_at_start:.4g} Å^3)")
        flown = sorted(set(isolated_atoms(atoms, cutoff).tolist()) - isolated_at_start)
        if flown:
            raise SimulationBlewUp(f"atoms {flown[:10]} flew apart (no neighbour within {cutoff} Å) "
                                   f"at step {step}")

    def record() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        temp = atoms.get_temperature()
        rows.append((dyn.nsteps, dyn.nsteps * timestep_fs, epot, ekin, epot + ekin, temp,
                     atoms.get_volume() if atoms.pbc.all() else float("nan")))
        if bar is not None:
            bar.set_postfix(T=f"{temp:.0f}K", Etot=f"{epot + ekin:.4f}eV")
        check(dyn.nsteps, epot, temp)

    # The starting structure, before any file is opened: a calculator's refusal (unknown element,
    # overlapping atoms, out of the domain) or a bad start is the caller's mistake, not a stop.
    try:
        check(0, atoms.get_potential_energy(), atoms.get_temperature())
    except SimulationBlewUp as err:
        raise ValueError(f"the starting structure cannot be simulated: {err}") from None

    summary = MDSummary(ensemble=ensemble, steps=0, timestep_fs=timestep_fs, n_atoms=len(atoms),
                        completed=False)
    bar = None
    with outputs:
        frames = FrameWriter(outputs.start(traj), atoms, traj) if traj else None
        log_writer = LogWriter(outputs.start(log), log, dyn, atoms, timestep_fs) if log else None
        # ASE calls observers at step 0 and every `interval` steps; the last step is added.
        observers = [record] + [w for w in (log_writer, frames) if w is not None]
        for observer in observers:
            dyn.attach(observer, interval=interval)
            if steps % interval:
                dyn.attach(observer, interval=-steps)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", desc=f"MD {ensemble.upper()}")
            dyn.attach(lambda: bar.update(1) if dyn.nsteps else None, interval=1)
        # non-finite forces are caught at the step they appear, before they move any atom
        dyn.attach(lambda: check_finite(atoms, dyn.nsteps), interval=1)
        # After the first step the run has really started: the trajectory and log go on under their
        # final names, so that even a killed run leaves the frames so far.
        dyn.attach(lambda: [outputs.promote(p) for p in (traj, log) if p], interval=-1)
        interrupted = None
        t0 = time.perf_counter()
        try:
            dyn.run(steps)
            summary.completed, summary.message = True, "completed"
        except KeyboardInterrupt as err:
            summary.message, interrupted = f"interrupted at step {dyn.nsteps}", err
        except Exception as err:
            reason = physics_stop(err, atoms, dyn.nsteps + 1)
            if reason is None or not rows:
                raise
            summary.message = f"stopped: {reason}"
        finally:
            elapsed = time.perf_counter() - t0
            for closable in (bar, frames, log_writer):
                if closable is not None:
                    closable.close()
        summary.steps = dyn.nsteps
        summary.steps_per_second = dyn.nsteps / elapsed if elapsed > 0 else float("nan")
        data = np.array(rows, dtype=float)
        if len(data) >= 2:
            temps = data[:, 5]
            summary.temperature_mean_K = float(temps[1:].mean())
            summary.temperature_std_K = float(temps[1:].std())
            if ensemble == "nve":
                slope = np.polyfit(data[:, 1] / 1000.0, data[:, 4], 1)[0]  # eV per ps
                summary.energy_drift_meV_per_atom_per_ps = float(1000.0 * slope / len(atoms))
        if plot and interrupted is None:
            plot_md(data, outputs.start(plot), ensemble, fmt=plot.rsplit(".", 1)[-1].lower())
        outputs.commit()
        summary.files = {k: v for k, v in (("traj", traj), ("log", log), ("plot", plot))
                         if v and v in outputs.written}
    if interrupted is not None:
        interrupted.summary = summary  # what was kept, for the caller's message
        raise interrupted
    return summary


@dataclass
class RelaxSummary:
    converged: bool
    steps: int
    energy_eV: float
    max_force_eV_per_A: float
    stress_eV_per_A3: Optional[list] = None
    output: Optional[str] = None
    completed: bool = True
    message: str = ""
    files: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def relax(atoms: Atoms, calculator, fmax: float = 0.05, cell: bool = False,
          optimizer: str = "bfgs", steps: int = 1000, out: Optional[str] = None,
          trajectory: Optional[str] = None, logfile: Optional[str] = "-",
          inputs: tuple = ()) -> RelaxSummary:
    """Relax ``atoms`` in place until the largest force (and cell force) is below ``fmax`` eV/Å.

    ``out``: the final structure, in any format ASE writes (picked from the name), written when the
    run ends; ``trajectory``: the optimizer's steps (``.traj``), under its final name from the first
    step on. A run stopped by the physics (``completed=False``, see the module docstring) keeps the
    trajectory so far and writes no ``out``. Raises ``ValueError`` for bad arguments, an ``out``
    format that cannot hold this structure, or a starting structure the calculator refuses, before
    any file is written.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    check_relax_arguments(fmax, steps)
    check_structure(atoms, periodic_cell=cell, what="relaxing the cell")
    outputs = OutputFiles(inputs)
    out_format = None
    if out:
        outputs.add(out, "relaxed structure")
        out_format = structure_format(out)
    if trajectory:
        outputs.add(trajectory, "optimizer trajectory", (".traj",))
    atoms.calc = calculator
    target = FrechetCellFilter(atoms) if cell else atoms
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise ValueError("the starting structure has non-finite energy or forces with this model")
    last = {"energy": float(energy), "fmax": _max_force(forces)}
    summary = RelaxSummary(converged=False, steps=0, energy_eV=last["energy"],
                           max_force_eV_per_A=last["fmax"])
    with outputs:
        if out:  # the writer must take this structure: found now, not after the relaxation
            try:
                write(outputs.start(out), atoms, format=out_format)
            except Exception as err:  # ASE's writers raise many types for a structure they refuse
                raise ValueError(f"cannot write this structure as {out!r} (ASE format "
                                 f"{out_format}): {type(err).__name__}: {err}") from None
        steps_file = Trajectory(outputs.start(trajectory), "w", atoms) if trajectory else None
        opt = OPTIMIZERS[optimizer](target, logfile=logfile, trajectory=steps_file)
        if trajectory:  # as in run_md: after the first step the trajectory is under its final name
            opt.attach(lambda: outputs.promote(trajectory), interval=-1)

        def remember() -> None:
            e, f = atoms.get_potential_energy(), atoms.get_forces()
            if not (np.isfinite(e) and np.isfinite(f).all()):
                raise SimulationBlewUp(f"non-finite energy or forces at step {opt.nsteps}")
            last["energy"], last["fmax"] = float(e), _max_force(f)

        opt.attach(remember, interval=1)
        interrupted = None
        try:
            summary.converged = bool(opt.run(fmax=fmax, steps=steps))
            summary.message = "converged" if summary.converged else f"not converged in {steps} steps"
        except KeyboardInterrupt as err:
            summary.completed, interrupted = False, err
            summary.message = f"interrupted at step {opt.nsteps}"
        except Exception as err:
            reason = physics_stop(err, atoms, opt.nsteps + 1)
            if reason is None:
                raise
            summary.completed, summary.message = False, f"stopped: {reason}"
        finally:
            opt.close()
            if steps_file is not None:
                steps_file.close()
        summary.steps = int(opt.nsteps)
        summary.energy_eV, summary.max_force_eV_per_A = last["energy"], last["fmax"]
        keep = [trajectory] if trajectory else []
        if summary.completed:
            if atoms.pbc.all():
                summary.stress_eV_per_A3 = atoms.get_stress().tolist()
            if out:
                write(outputs.start(out), atoms, format=out_format)
                keep.append(out)
                summary.output = out
        outputs.commit(keep)
        summary.files = {k: v for k, v in (("out", out), ("traj", trajectory))
                         if v and v in outputs.written}
    if interrupted is not None:
        interrupted.summary = summary  # what was kept, for the caller's message
        raise interrupted
    return summary


def _max_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


__all__ = ["ENSEMBLES", "OPTIMIZERS", "PHYSICS_STOPS", "MDSummary", "RelaxSummary", "SimulationBlewUp",
           "check_md_arguments", "check_structure", "thermalize", "langevin_nvt", "make_dynamics",
           "run_md", "relax", "plot_md"]
