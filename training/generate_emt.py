"""ASE EMT reference data: periodic fcc Cu (and a random Cu-Ni alloy) Langevin MD, with stress.

Produces an extended-XYZ file (ASE writer, SinglePointCalculator results): per frame ``energy`` (eV),
``forces`` (eV/Å), ``stress`` (Voigt, eV/Å^3; EMT's potential/virial stress, no kinetic term), and in
``info``: ``temperature_K``, ``cell_label`` (which strained cell), ``run`` (index of the MD run).

For every cell in a small set of strained cells (equilibrium, ±2 % isotropic, tetragonal, shear)
and every temperature, one Langevin run (2 fs step, friction 0.02/fs, its own seed) is equilibrated
and then sampled every ``--stride`` steps, so energies, forces and stress all vary.

Systems:
- ``cu``: fcc Cu, a = 3.61 Å, 2x2x2 conventional cells (32 atoms).
- ``cuni``: random Cu50Ni50 fcc, a = 3.565 Å (Vegard), 2x2x2 conventional cells (32 atoms).

Runtime on one core of the shared machine: ~2 min for the shipped Cu file (150 frames, 15 runs),
~1.5 min for Cu-Ni (60 frames).  Shipped files::

    python training/generate_emt.py --system cu   --frames-per-run 10   # 150 frames
    python training/generate_emt.py --system cuni --frames-per-run 4    # 60 frames
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

LATTICE_A = {"cu": 3.61, "cuni": 0.5 * (3.61 + 3.52)}

# Deformation gradients applied to the equilibrium cell (row vectors: cell' = cell @ F).
STRAINS: dict[str, np.ndarray] = {
    "eq": np.eye(3),
    "iso-2%": 0.98 * np.eye(3),
    "iso+2%": 1.02 * np.eye(3),
    "tetragonal": np.diag([1.02, 1.02, 0.97]),
    "shear": np.array([[1.0, 0.03, 0.0], [0.03, 1.0, 0.0], [0.0, 0.0, 1.0]]),
}


def make_cell(system: str, size: int, rng: np.random.Generator):
    """fcc supercell of ``size``^3 conventional cells (4 size^3 atoms), random alloy for ``cuni``."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=LATTICE_A[system], cubic=True).repeat((size, size, size))
    if system == "cuni":
        n = len(atoms)
        symbols = np.array(["Cu"] * (n // 2) + ["Ni"] * (n - n // 2))
        rng.shuffle(symbols)
        atoms.set_chemical_symbols(symbols.tolist())
    return atoms


def run_md(atoms, temperature_K: float, frames: int, stride: int, equil_steps: int, seed: int,
           timestep_fs: float = 2.0, friction_per_fs: float = 0.02) -> list:
    """Langevin MD with EMT; returns ``frames`` snapshots carrying SinglePointCalculator results."""
    from ase import Atoms, units
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd

    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = EMT()
    # thermalize_momenta is the ASE >= 3.29 name of MaxwellBoltzmannDistribution
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    dyn.run(equil_steps)
    out = []
    for _ in range(frames):
        dyn.run(stride)
        snap = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        snap.calc = SinglePointCalculator(
            snap,
            energy=atoms.get_potential_energy(),
            free_energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(voigt=True),
        )
        out.append(snap)
    return out


def generate(system: str, temperatures: list[float], frames_per_run: int, stride: int, equil_steps: int,
             seed: int, size: int, strains: list[str]) -> list:
    """All frames for ``system``: one MD run per (strained cell, temperature)."""
    rng = np.random.default_rng(seed)
    base = make_cell(system, size, rng)
    frames = []
    run = 0
    for label in strains:
        cell = base.copy()
        cell.set_cell(base.cell.array @ STRAINS[label], scale_atoms=True)
        for temp in temperatures:
            run_seed = int(rng.integers(2**31))
            for snap in run_md(cell, temp, frames_per_run, stride, equil_steps, run_seed):
                snap.info.update(temperature_K=float(temp), cell_label=label, run=run, system=system)
                frames.append(snap)
            run += 1
    return frames


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=sorted(LATTICE_A), default="cu")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 900.0], help="K")
    p.add_argument("--strains", nargs="+", choices=list(STRAINS), default=list(STRAINS))
    p.add_argument("--frames-per-run", type=int, default=10)
    p.add_argument("--stride", type=int, default=25, help="MD steps (2 fs) between saved frames")
    p.add_argument("--equil-steps", type=int, default=200)
    p.add_argument("--size", type=int, default=2, help="conventional cells per edge (4 size^3 atoms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="default: training/data/<system>_emt.extxyz")
    a = p.parse_args(argv)
    out = a.out or REPO / "training" / "data" / f"{a.system}_emt.extxyz"
    import ase.io

    t0 = time.perf_counter()
    frames = generate(a.system, a.temperatures, a.frames_per_run, a.stride, a.equil_steps, a.seed, a.size,
                      a.strains)
    out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(out, frames, format="extxyz")
    e = np.array([f.get_potential_energy() for f in frames]) / len(frames[0])
    print(f"wrote {out}: {len(frames)} frames of {len(frames[0])} atoms, "
          f"E/atom {e.min():.4f}..{e.max():.4f} eV, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
