"""OpenMM amber14 + OBC2 implicit-solvent Langevin MD of the bundled peptides, with energies and forces.

Produces, for ``--out-prefix P``:

- ``P.h5``: mdtraj HDF5 trajectory (positions float32, nm inside the file; topology included).
- ``P.npz``: ``pos`` (frames, atoms, 3) float32 Å, ``atomic_numbers`` (atoms,) int,
  ``energy`` (frames,) float64 eV (potential energy), ``forces`` (frames, atoms, 3) float32 eV/Å,
  plus ``time_ps`` (frames,), ``temperature_K``, ``timestep_fs``, ``seed``, ``system``.

Model: ``amber14-all.xml`` + ``implicit/obc2.xml``, no cutoff, **no constraints** (the forces must be
the full gradient of the stored energy), ``LangevinMiddleIntegrator`` (default 300 K, 1/ps friction,
1 fs step). The run minimises the bundled structure, draws velocities from ``--seed``, equilibrates,
then saves every ``--stride`` steps. Each saved frame is rounded to float32 nm (what the HDF5 file
holds) and re-evaluated in a separate context, so energies/forces belong exactly to the stored
positions. Use a different ``--seed`` for train and test: they are independent runs.

Units: kJ/mol -> eV with ``KJ_PER_MOL_IN_EV``; kJ/mol/nm -> eV/Å with ``KJ_PER_MOL_IN_EV / NM_IN_ANGSTROM``;
nm -> Å with ``NM_IN_ANGSTROM`` (``ase_eqgnn.data.units``).

Runtime, one CPU thread of the shared 2-core machine (OpenMM CPU platform; OBC2 is a CustomGBForce,
which dominates): alanine dipeptide ~1,950 steps/s (2500 frames at stride 200 = 0.5 ns: 4.5 min),
chignolin (138 atoms) ~95 steps/s (400 frames at stride 100 = 40 ps: 8 min).

Usage::

    python training/generate_openmm.py --system ala2 --frames 2500 --stride 200 --seed 1 \
        --out-prefix training/data/ala2_train
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ase_eqgnn.data.units import KJ_PER_MOL_IN_EV, NM_IN_ANGSTROM  # noqa: E402
from ase_eqgnn.structures import structure_path  # noqa: E402

FORCEFIELD_FILES = ("amber14-all.xml", "implicit/obc2.xml")
KJ_PER_MOL_NM_IN_EV_PER_ANGSTROM = KJ_PER_MOL_IN_EV / NM_IN_ANGSTROM


def make_system(name: str):
    """(topology, system, positions in nm as float64 array) for a bundled structure."""
    from openmm import app, unit

    pdb = app.PDBFile(str(structure_path(name)))
    ff = app.ForceField(*FORCEFIELD_FILES)
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    pos = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return pdb.topology, system, pos


def _platform(name: str, threads: int):
    import openmm

    platform = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if name == "CPU" else {}
    return platform, props


def evaluate(context, positions_nm: np.ndarray) -> tuple[float, np.ndarray]:
    """Potential energy (eV) and forces (eV/Å, float64) at ``positions_nm``."""
    from openmm import unit

    context.setPositions(positions_nm)
    state = context.getState(getEnergy=True, getForces=True)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_IN_EV
    f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return float(e), np.asarray(f, dtype=np.float64) * KJ_PER_MOL_NM_IN_EV_PER_ANGSTROM


def run(
    system_name: str,
    frames: int,
    stride: int,
    seed: int,
    out_prefix: pathlib.Path,
    *,
    temperature_K: float = 300.0,
    friction_per_ps: float = 1.0,
    timestep_fs: float = 1.0,
    equil_steps: int = 20_000,
    platform: str = "CPU",
    threads: int = 1,
) -> dict:
    """Run one independent MD simulation and write ``out_prefix``.h5 / .npz. Returns a summary dict."""
    import mdtraj
    import openmm
    from openmm import unit

    t0 = time.perf_counter()
    topology, system, pos0 = make_system(system_name)
    plat, props = _platform(platform, threads)
    integrator = openmm.LangevinMiddleIntegrator(
        temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(seed)
    sim_ctx = openmm.Context(system, integrator, plat, props)
    eval_ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)
    sim_ctx.setPositions(pos0)
    openmm.LocalEnergyMinimizer.minimize(sim_ctx, 1.0, 2000)
    sim_ctx.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed)
    integrator.step(equil_steps)

    n_atoms = topology.getNumAtoms()
    xyz_nm = np.empty((frames, n_atoms, 3), dtype=np.float32)
    energy = np.empty(frames, dtype=np.float64)
    forces = np.empty((frames, n_atoms, 3), dtype=np.float64)
    t_md = time.perf_counter()
    for k in range(frames):
        integrator.step(stride)
        state = sim_ctx.getState(getPositions=True)
        x = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float32)
        xyz_nm[k] = x
        energy[k], forces[k] = evaluate(eval_ctx, x.astype(np.float64))
    t_md = time.perf_counter() - t_md
    if not (np.isfinite(energy).all() and np.isfinite(forces).all()):
        raise RuntimeError("non-finite energy or forces: the simulation blew up")

    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    time_ps = (equil_steps + stride * (1 + np.arange(frames))) * timestep_fs * 1e-3
    md_top = mdtraj.Topology.from_openmm(topology)
    traj = mdtraj.Trajectory(xyz_nm, md_top, time=time_ps)
    h5_path = out_prefix.with_suffix(".h5")
    if h5_path.exists():
        h5_path.unlink()
    traj.save_hdf5(str(h5_path))
    numbers = np.array([a.element.atomic_number for a in topology.atoms()], dtype=np.int64)
    npz_path = out_prefix.with_suffix(".npz")
    np.savez_compressed(
        npz_path,
        pos=(xyz_nm.astype(np.float64) * NM_IN_ANGSTROM).astype(np.float32),
        atomic_numbers=numbers,
        energy=energy,
        forces=forces.astype(np.float32),
        time_ps=time_ps,
        temperature_K=np.float64(temperature_K),
        timestep_fs=np.float64(timestep_fs),
        seed=np.int64(seed),
        system=np.str_(system_name),
        forcefield=np.str_(" + ".join(FORCEFIELD_FILES)),
    )
    total = time.perf_counter() - t0
    steps = frames * stride
    summary = {
        "system": system_name, "frames": frames, "stride": stride, "seed": seed, "atoms": n_atoms,
        "simulated_ps": (equil_steps + steps) * timestep_fs * 1e-3,
        "steps_per_s": steps / t_md, "wall_s": total, "h5": str(h5_path), "npz": str(npz_path),
        "energy_mean_eV": float(energy.mean()), "energy_std_eV": float(energy.std()),
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", choices=("ala2", "chignolin"), required=True)
    p.add_argument("--frames", type=int, default=500, help="frames to save")
    p.add_argument("--stride", type=int, default=100, help="MD steps between saved frames")
    p.add_argument("--seed", type=int, default=1, help="seed for velocities and the Langevin noise")
    p.add_argument("--out-prefix", type=pathlib.Path, required=True, help="writes PREFIX.h5 and PREFIX.npz")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--timestep", type=float, default=1.0, help="fs (unconstrained: keep <= 1 fs)")
    p.add_argument("--equil-steps", type=int, default=20_000)
    p.add_argument("--platform", default="CPU", choices=("CPU", "Reference", "CUDA", "OpenCL"))
    p.add_argument("--threads", type=int, default=1, help="CPU platform threads")
    a = p.parse_args(argv)
    if a.frames < 1 or a.stride < 1:
        p.error("--frames and --stride must be positive")
    s = run(a.system, a.frames, a.stride, a.seed, a.out_prefix, temperature_K=a.temperature,
            friction_per_ps=a.friction, timestep_fs=a.timestep, equil_steps=a.equil_steps,
            platform=a.platform, threads=a.threads)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


if __name__ == "__main__":
    main()
