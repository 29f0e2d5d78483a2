"""Molecular dynamics and relaxations with ASE's drivers: what ``eqgnn-md`` and ``eqgnn-relax`` run.

:func:`run_md` runs NVE (velocity Verlet), NVT (Langevin) or NPT (isotropic MTK) dynamics, writes an ASE
trajectory, a CSV log and a PNG plot as it goes, watches for a blow-up (NaN, temperature run-away,
atoms flying apart) and returns a summary: the energy drift for NVE (meV/atom/ps, from a linear fit of
the total energy against time), the mean and spread of the temperature otherwise.

:func:`relax` relaxes positions (and the cell through ``FrechetCellFilter``) with BFGS or FIRE.

Units: fs, K, bar at the interface; eV, Å inside (ASE's).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from ase import Atoms, units
from ase.constraints import FixCom
from ase.filters import FrechetCellFilter
from ase.io import Trajectory, write
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from .neighbors import neighbor_list

ENSEMBLES = ("nve", "nvt", "npt")
OPTIMIZERS = {"bfgs": BFGS, "fire": FIRE}


class SimulationBlewUp(RuntimeError):
    """The simulation left physical territory; the message says how and at which step."""


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


def _isolated_atoms(atoms: Atoms, radius: float) -> np.ndarray:
    """Indices of atoms with no neighbour within ``radius`` (Å)."""
    if len(atoms) < 2:
        return np.zeros(0, dtype=int)
    i, _, _ = neighbor_list(torch.tensor(atoms.positions), radius, torch.tensor(atoms.cell[:]),
                            atoms.pbc)
    has = np.zeros(len(atoms), dtype=bool)
    has[i.numpy()] = True
    return np.nonzero(~has)[0]


def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann velocities at ``temperature_K`` without net momentum (nor net rotation for
    an isolated structure)."""
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


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


def run_md(atoms: Atoms, calculator, ensemble: str = "nvt", temperature_K: float = 300.0,
           timestep_fs: float = 0.5, steps: int = 1000, friction_per_fs: float = 0.01,
           pressure_bar: float = 1.0, traj: Optional[str] = "md.traj", log: Optional[str] = "md.csv",
           plot: Optional[str] = "md.png", interval: int = 10, seed: int = 0,
           max_temperature_K: Optional[float] = None, progress: bool = True) -> MDSummary:
    """Run MD with ``calculator`` on ``atoms`` (modified in place); see the module docstring.

    ``interval``: steps between trajectory frames, log rows and blow-up checks. Velocities are drawn
    from Maxwell–Boltzmann at ``temperature_K`` unless ``atoms`` already carries momenta.
    ``max_temperature_K`` (default: max(10 × temperature, 2000 K)) stops a run-away.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if steps < 0 or timestep_fs <= 0 or interval < 1:
        raise ValueError("steps must be >= 0, timestep_fs > 0 and interval >= 1")
    if ensemble == "npt" and not atoms.pbc.all():
        raise ValueError("NPT needs a cell periodic in all three directions")
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    if not np.any(atoms.get_momenta()):
        thermalize(atoms, temperature_K, rng)
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
    elif ensemble == "nvt":
        dyn = langevin_nvt(atoms, timestep_fs, temperature_K, friction_per_fs, rng)
    else:
        dyn = IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K,
                              pressure_au=pressure_bar * units.bar, tdamp=100 * dt, pdamp=1000 * dt)
    max_t = max(10 * temperature_K, 2000.0) if max_temperature_K is None else max_temperature_K
    cutoff = float(getattr(calculator, "cutoff", 5.0))
    isolated_at_start = set(_isolated_atoms(atoms, cutoff).tolist())

    rows = []
    writer = Trajectory(traj, "w", atoms) if traj else None
    log_file = open(log, "w", newline="") if log else None
    csv_writer = csv.writer(log_file) if log_file else None
    if csv_writer:
        csv_writer.writerow(["step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K",
                             "volume_A3"])
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, unit="step", desc=f"MD {ensemble.upper()}")

    def observe():
        step = dyn.nsteps
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        temp = atoms.get_temperature()
        row = (step, step * timestep_fs, epot, ekin, epot + ekin, temp,
               atoms.get_volume() if atoms.pbc.all() else float("nan"))
        rows.append(row)
        if csv_writer is not None:
            csv_writer.writerow([f"{x:.10g}" if isinstance(x, float) else x for x in row])
            log_file.flush()
        if writer is not None:
            writer.write()
        if bar is not None:
            bar.set_postfix(T=f"{temp:.0f}K", Etot=f"{epot + ekin:.4f}eV")
        if not (math.isfinite(epot) and np.isfinite(atoms.get_forces()).all()):
            raise SimulationBlewUp(f"non-finite energy or forces at step {step}")
        if temp > max_t:
            raise SimulationBlewUp(f"temperature ran away to {temp:.0f} K at step {step} "
                                   f"(limit {max_t:.0f} K)")
        flown = sorted(set(_isolated_atoms(atoms, cutoff).tolist()) - isolated_at_start)
        if flown:
            raise SimulationBlewUp(f"atoms {flown[:10]} flew apart (no neighbour within {cutoff} Å) "
                                   f"at step {step}")

    import time

    summary = MDSummary(ensemble=ensemble, steps=0, timestep_fs=timestep_fs, n_atoms=len(atoms),
                        completed=False)
    t0 = time.perf_counter()
    try:
        observe()
        done = 0
        while done < steps:
            n = min(interval, steps - done)
            dyn.run(n)
            done += n
            if bar is not None:
                bar.update(n)
            observe()
        summary.completed = True
        summary.message = "completed"
    except SimulationBlewUp as err:
        summary.message = f"stopped: {err}"
    finally:
        elapsed = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if log_file is not None:
            log_file.close()
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
    summary.files = {k: v for k, v in (("traj", traj), ("log", log), ("plot", plot)) if v}
    if plot and len(data) >= 2:
        plot_md(data, plot, ensemble)
    return summary


def plot_md(data: np.ndarray, path: str, title: str = "") -> None:
    """Energies and temperature against time (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    t = data[:, 1] / 1000.0
    for col, label in ((2, "potential"), (4, "total")):
        ax1.plot(t, data[:, col] - data[0, col], label=label)
    ax1.set_ylabel("E - E(0) (eV)")
    ax1.legend()
    ax2.plot(t, data[:, 5], color="C3")
    ax2.set_ylabel("temperature (K)")
    ax2.set_xlabel("time (ps)")
    ax1.set_title(title.upper())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class RelaxSummary:
    converged: bool
    steps: int
    energy_eV: float
    max_force_eV_per_A: float
    stress_eV_per_A3: Optional[list] = None
    output: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def relax(atoms: Atoms, calculator, fmax: float = 0.05, cell: bool = False,
          optimizer: str = "bfgs", steps: int = 1000, out: Optional[str] = None,
          trajectory: Optional[str] = None, logfile: Optional[str] = "-") -> RelaxSummary:
    """Relax ``atoms`` in place until the largest force (and cell force) is below ``fmax`` eV/Å."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if cell and not atoms.pbc.all():
        raise ValueError("--cell relaxes the cell, which needs periodic boundaries in 3-D")
    atoms.calc = calculator
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = OPTIMIZERS[optimizer](target, logfile=logfile, trajectory=trajectory)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = atoms.get_forces()
    summary = RelaxSummary(
        converged=converged, steps=int(opt.nsteps), energy_eV=float(atoms.get_potential_energy()),
        max_force_eV_per_A=float(np.linalg.norm(forces, axis=1).max()) if len(atoms) else 0.0,
        stress_eV_per_A3=atoms.get_stress().tolist() if atoms.pbc.all() else None, output=out)
    if out:
        write(out, atoms)
    return summary
