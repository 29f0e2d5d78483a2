"""Stability of the bundled potentials in long MD runs (a benchmark, not a test).

- ``ala2``: Langevin MD at 300 K (0.5 fs) from the bundled structure; every covalent bond of the
  topology must stay intact (length below 1.3 × its length in the minimised bundled structure; the
  reference OpenMM run never exceeds 1.11 ×, while CGVAE's radius rule is crossed by 1 % of its
  frames through C-H vibrations alone), and the backbone
  (φ, ψ) must stay in the regions the reference simulator (OpenMM, the shipped training run) visits.
  Then NVE in float64: energy drift in meV/atom/ps.
- ``cu-emt``: Langevin NVT at 600 K (2 fs) on a 4×4×4 fcc supercell (256 atoms); the crystal must
  stay fcc: every atom keeps 12 neighbours within 3.0 Å on average over the last frames, and the mean
  square displacement from the lattice stays small (no melting, no drift).

The brief's figures are 100 ps for ala2 and 50 ps for Cu; the defaults run that, which takes hours on
2 CPU cores. ``--ala2-ps`` / ``--cu-ps`` / ``--nve-ps`` shorten it; the report says what was run.

    python benchmarks/stability.py [--ala2-ps 100] [--nve-ps 10] [--cu-ps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mdtraj as md
import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from ase_eqgnn import EqGNNCalculator, neighbor_list
from ase_eqgnn.simulate import langevin_nvt, thermalize
from ase_eqgnn.structures import load_structure, structure_path

ROOT = Path(__file__).resolve().parent.parent


def thermalised_langevin(atoms, model: str, temperature_K: float, timestep_fs: float,
                          seed: int) -> Langevin:
    """Bundled potential ``model`` (float32) on ``atoms``, thermal velocities and ``run_md``'s
    Langevin NVT (friction 0.01/fs) sharing the seeded generator."""
    atoms.calc = EqGNNCalculator.from_pretrained(model, dtype="float32", keep_freed_memory=True)
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K, rng)
    return langevin_nvt(atoms, timestep_fs, temperature_K, 0.01, rng)


def ramachandran_regions(phi: np.ndarray, psi: np.ndarray) -> dict:
    """Fractions of frames in the usual basins (degrees): β/PII (φ<0, ψ>50 or ψ<-150), αR (φ<0,
    -150<ψ<50), αL (φ>0)."""
    phi, psi = np.degrees(phi), np.degrees(psi)
    beta = (phi < 0) & ((psi > 50) | (psi < -150))
    alpha_r = (phi < 0) & (psi >= -150) & (psi <= 50)
    return {"beta": float(beta.mean()), "alphaR": float(alpha_r.mean()), "alphaL": float((phi >= 0).mean())}


def backbone_angles(xyz_A: np.ndarray, topology) -> tuple:
    traj = md.Trajectory(xyz_A / 10.0, topology)
    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    return phi[:, 0], psi[:, 0]


def ala2_stability(ps: float, nve_ps: float, seed: int = 0) -> dict:
    topology = md.load(str(structure_path("ala2"))).topology
    bonds = np.array([[b[0].index, b[1].index] for b in topology.bonds])
    atoms = load_structure("ala2")
    start = atoms.get_positions()
    limit = 1.3 * np.linalg.norm(start[bonds[:, 0]] - start[bonds[:, 1]], axis=1)

    dyn = thermalised_langevin(atoms, "ala2", 300.0, 0.5, seed)
    steps = int(round(ps * 1000 / 0.5))
    frames, broken_at, broken_bond = [], None, None
    t0 = time.perf_counter()
    for done in range(0, steps, 100):
        dyn.run(min(100, steps - done))
        pos = atoms.get_positions()
        frames.append(pos.copy())
        lengths = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)
        if (lengths > limit).any() or not np.isfinite(pos).all():
            broken_at = dyn.nsteps * 0.5 / 1000
            k = int(np.argmax(lengths / limit))
            broken_bond = [str(topology.atom(int(a))) for a in bonds[k]]
            break
    elapsed = time.perf_counter() - t0
    phi, psi = backbone_angles(np.array(frames), topology)
    ref_xyz = md.load(str(ROOT / "training/data/ala2_train.h5")).xyz * 10.0
    ref_phi, ref_psi = backbone_angles(ref_xyz, topology)
    out = {
        "langevin_ps_run": dyn.nsteps * 0.5 / 1000, "langevin_ps_asked": ps,
        "bonds_intact": broken_at is None, "bond_broken_at_ps": broken_at,
        "broken_bond": broken_bond,
        "steps_per_s": dyn.nsteps / elapsed,
        "ramachandran_model": ramachandran_regions(phi, psi),
        "ramachandran_reference": ramachandran_regions(ref_phi, ref_psi),
    }
    # NVE in float64 from the last Langevin state
    if broken_at is None and nve_ps > 0:
        atoms.calc = EqGNNCalculator.from_pretrained("ala2", dtype="float64", keep_freed_memory=True)
        nve = VelocityVerlet(atoms, 0.5 * units.fs)
        times, energies = [], []
        n = int(round(nve_ps * 1000 / 0.5))
        for done in range(0, n, 50):
            nve.run(min(50, n - done))
            times.append(nve.nsteps * 0.5 / 1000)
            energies.append(atoms.get_total_energy())
        slope = np.polyfit(times, energies, 1)[0]
        out.update(nve_ps=nve_ps, nve_drift_meV_per_atom_per_ps=float(1000 * slope / len(atoms)),
                   nve_energy_spread_meV_per_atom=float(1000 * np.ptp(energies) / len(atoms)))
    return out


def cu_stability(ps: float, seed: int = 0) -> dict:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    lattice = atoms.get_positions().copy()
    dyn = thermalised_langevin(atoms, "cu-emt", 600.0, 2.0, seed)
    steps = int(round(ps * 1000 / 2))
    coordination, msd, temps = [], [], []
    t0 = time.perf_counter()
    for done in range(0, steps, 50):
        dyn.run(min(50, steps - done))
        pos = atoms.get_positions()
        i, _, _ = neighbor_list(torch.tensor(pos), 3.0, torch.tensor(atoms.cell[:]), True)
        coordination.append(len(i) / len(atoms))
        msd.append(float(((pos - lattice) ** 2).sum(1).mean()))
        temps.append(atoms.get_temperature())
    elapsed = time.perf_counter() - t0
    tail = max(1, len(coordination) // 2)
    mean_cn = float(np.mean(coordination[-tail:]))
    return {"nvt_ps_run": dyn.nsteps * 2 / 1000, "nvt_ps_asked": ps,
            "mean_neighbours_within_3A": mean_cn, "final_msd_A2": msd[-1],
            "temperature_K": float(np.mean(temps[-tail:])), "steps_per_s": dyn.nsteps / elapsed,
            "holds_fcc": bool(abs(mean_cn - 12) < 0.5 and msd[-1] < 0.5)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ala2-ps", type=float, default=100.0)
    parser.add_argument("--nve-ps", type=float, default=10.0)
    parser.add_argument("--cu-ps", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {}
    if args.ala2_ps > 0:
        report["ala2"] = ala2_stability(args.ala2_ps, args.nve_ps)
        print("ala2:", json.dumps(report["ala2"], indent=1))
    if args.cu_ps > 0:
        report["cu-emt"] = cu_stability(args.cu_ps)
        print("cu-emt:", json.dumps(report["cu-emt"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
