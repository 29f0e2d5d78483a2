"""The coarse-grained loop, measured (issue 19): free-energy surface, back-mapped ensemble, speed.

A benchmark, not a test. Sections (each in the JSON report and printed):

- ``reference``: the all-atom OpenMM (phi, psi) reference (``training/data/ala2_rama_reference.json``,
  made by ``training/ala2_cg_reference.py``): populations, the two independent halves, their
  largest difference.
- ``fes``: a CG MD run's (phi, psi) of beads (C-N-CA-C and N-CA-C-N) against the reference: basin
  populations (beta/C7eq, alphaR, alphaL as in :mod:`ase_eqgnn.cg.ramachandran`), the JS divergence
  of the 12 x 12 histograms on 30° bins, unvisited basins, and the issue's targets (every basin with
  >= 1 % of the reference visited, populations within 10 points, JS <= 0.05); with ``--plot``, the two
  surfaces side by side.
- ``backmap``: CG frames back-mapped to all atoms (bundled back-mapper ``ala2`` unless
  ``--backmapper``): valid bond graphs against the topology's bonds (target >= 0.98), clashes
  (heavy atoms more than 3 bonds apart closer than 2 Å), and the heavy-atom phi/psi of the
  back-mapped structures against the beads' (the same atoms, so they should agree).
- ``speed``: Langevin steps/s and simulated ns/day of the CG potential and of the bundled all-atom
  ``ala2`` potential on this machine, and the time step each can take: the largest ``dt`` of a ladder
  for which a short NVE run (after Langevin thermalisation at the same ``dt``) keeps the RMS
  fluctuation of the total energy below ``--dt-tolerance`` (default 5 %) of the kinetic energy's.

The CG potential: ``--cg-model`` a CG model file or bundled name (default ``ala2-cg``) through
``EqGNNCalculator``; ``prior`` uses the CG priors fitted to the CG dataset alone (bonds, angles,
repulsion; no network, so no (phi, psi) preferences: a baseline).
``--cg-traj`` compares an existing CG trajectory (any ``ase.io`` format of bead ``Atoms``) instead of
running CG MD here; ``--cg-traj dataset`` takes the CG dataset's own frames (the all-atom runs mapped
to beads: the control, which must meet every target).

    python benchmarks/cg_loop.py --cg-model ala2-cg --cg-ns 0.2 --json cg_loop.json --plot rama.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.verlet import VelocityVerlet

from ase_eqgnn.cg import ramachandran as rama
from ase_eqgnn.cg.beads import beads_to_atoms
from ase_eqgnn.cg.forcematch import load_cg_dataset
from ase_eqgnn.cg.loop import backmap_report, fes_report, run_cg_md, run_replicas
from ase_eqgnn.cg.priors import CGPrior
from ase_eqgnn.pretrained import resolve_model
from ase_eqgnn.simulate import langevin_nvt, thermalize

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "training" / "data"


class PriorCalculator(Calculator):
    """The CG priors alone as an ASE calculator (the phase-1 stand-in for a CG potential)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, prior: CGPrior, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prior = prior.double()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        x = torch.as_tensor(self.atoms.get_positions(), dtype=torch.float64)
        energy, forces = self.prior.energy_and_forces(x)
        self.results = {"energy": float(energy), "free_energy": float(energy), "forces": forces.numpy()}


def cg_calculator(name: str, dataset):
    """'prior': the priors alone (a baseline); else a CG model file or bundled name."""
    if name == "prior":
        return PriorCalculator(CGPrior.fit(dataset.positions, dataset.temperature_K))
    from ase_eqgnn import EqGNNCalculator

    calc = EqGNNCalculator(resolve_model(name, kind="potential"), dtype="float32")
    if getattr(calc.model, "beads", None) != dataset.beads:
        raise SystemExit(f"--cg-model {name}: not a CG model of the dataset's beads")
    return calc


# -- sections -----------------------------------------------------------------------------------
def reference_section(reference: dict) -> dict:
    halves = reference.get("halves_by_runs", {})
    return {"simulated_ns": reference["simulated_ns"], "runs": reference["runs"],
            "populations": reference["populations"],
            "populations_standard_error": reference.get("populations_standard_error"),
            "halves": {k: halves[k]["populations"] for k in ("A", "B") if k in halves},
            "halves_max_difference_points": halves.get("max_difference_points"),
            "halves_js_divergence": halves.get("js_divergence")}


def fes_section(bead_xyz: np.ndarray, reference: dict) -> dict:
    return fes_report(bead_xyz, ref_histogram=np.array(reference["histogram"]),
                      ref_populations=reference["populations"], bin_deg=reference["bin_deg"])


def backmap_section(bead_xyz: np.ndarray, backmapper: str, frames: int, seed: int) -> dict:
    from ase_eqgnn.cg.backmap import BackMapper

    pick = np.linspace(0, len(bead_xyz) - 1, min(frames, len(bead_xyz))).astype(int)
    _, out = backmap_report(bead_xyz[pick], BackMapper.load(backmapper), seed=seed, with_dihedrals=True)
    return {"backmapper": backmapper, **out}


def _energy_fluctuation_ratio(atoms, dt_fs: float, steps: int) -> float:
    """RMS(total energy) / RMS(kinetic energy) over ``steps`` of NVE at ``dt_fs``; inf on a blow-up."""
    nve = VelocityVerlet(atoms, dt_fs * units.fs)
    total, kinetic = [], []
    for _ in range(max(1, steps // 10)):
        nve.run(10)
        ekin = atoms.get_kinetic_energy()
        etot = ekin + atoms.get_potential_energy()
        if not np.isfinite(etot):
            return float("inf")
        total.append(etot)
        kinetic.append(ekin)
    return float(np.std(total) / max(np.std(kinetic), 1e-12))


def md_speed(atoms, calc, temperature_K: float, dt_fs: float, steps: int, seed: int) -> dict:
    """Langevin steps/s and ns/day at ``dt_fs`` (after 50 untimed steps)."""
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K, rng)
    dyn = langevin_nvt(atoms, dt_fs, temperature_K, 0.01, rng)
    dyn.run(50)
    t0 = time.perf_counter()
    dyn.run(steps)
    rate = steps / (time.perf_counter() - t0)
    return {"timestep_fs": dt_fs, "steps": steps, "steps_per_s": rate, "ns_per_day": rate * dt_fs * 86400e-6}


def largest_timestep(make_atoms, calc, temperature_K: float, ladder, steps: int, tolerance: float,
                     seed: int) -> dict:
    """The largest ``dt`` of ``ladder`` whose NVE energy-fluctuation ratio stays below ``tolerance``."""
    ratios = {}
    for dt in sorted(ladder):
        atoms = make_atoms()
        atoms.calc = calc
        rng = np.random.default_rng(seed)
        thermalize(atoms, temperature_K, rng)
        try:
            langevin_nvt(atoms, dt, temperature_K, 0.01, rng).run(200)
            atoms.set_constraint()
            ratios[dt] = _energy_fluctuation_ratio(atoms, dt, steps)
        except (ValueError, RuntimeError):  # atoms too close / out of domain: this dt fails
            ratios[dt] = float("inf")
    ok = [dt for dt, r in ratios.items() if r < tolerance]
    return {"largest_timestep_fs": max(ok) if ok else None, "fluctuation_ratio": ratios,
            "tolerance": tolerance, "nve_steps": steps}


def speed_section(dataset, cg_calc, args) -> dict:
    from ase_eqgnn import EqGNNCalculator
    from ase_eqgnn.structures import load_structure

    cg_atoms = lambda: beads_to_atoms(dataset.beads, dataset.positions[0])  # noqa: E731
    aa_calc = EqGNNCalculator.from_pretrained("ala2", dtype="float32")
    ladder_cg = [float(x) for x in args.cg_timesteps.split(",")]
    ladder_aa = [float(x) for x in args.aa_timesteps.split(",")]
    cg_dt = largest_timestep(cg_atoms, cg_calc, dataset.temperature_K, ladder_cg, args.nve_steps,
                             args.dt_tolerance, args.seed)
    aa_dt = largest_timestep(lambda: load_structure("ala2"), aa_calc, dataset.temperature_K, ladder_aa,
                             args.nve_steps, args.dt_tolerance, args.seed)
    out = {"cg": {"timestep": cg_dt}, "all_atom": {"timestep": aa_dt}}
    for key, make, calc, test in (("cg", cg_atoms, cg_calc, cg_dt), ("all_atom", lambda: load_structure("ala2"),
                                                                      aa_calc, aa_dt)):
        dt = test["largest_timestep_fs"] or min(ladder_cg if key == "cg" else ladder_aa)
        out[key].update(md_speed(make(), calc, dataset.temperature_K, dt, args.speed_steps, args.seed))
    out["speedup_ns_per_day"] = out["cg"]["ns_per_day"] / out["all_atom"]["ns_per_day"]
    return out


def run_dataset_md(dataset, calc, ns: float, dt_fs: float, interval: int, seed: int,
                   replicas: int = 1, equil_ps: float = 0.0) -> tuple:
    """CG MD at the data's temperature from the dataset's first frame: frames [F, n, 3] after
    ``equil_ps`` of equilibration per replica, and the run's description. With ``replicas`` > 1
    (a CG model file), that many independent copies share ``ns`` (cg.loop.run_replicas)."""
    model = getattr(calc, "model", None)
    if replicas > 1 and getattr(model, "beads", None) is not None:
        per_replica = int(round((ns * 1e6 / dt_fs) / replicas))
        frames, info = run_replicas(model, dataset.positions[0], dataset.temperature_K, dt_fs,
                                    per_replica, replicas, interval, seed)
        skip = int(round(equil_ps * 1000 / (dt_fs * interval)))
        kept = frames[skip:].reshape(-1, frames.shape[-2], 3)
        info.update(equilibration_ps_per_replica=equil_ps, frames_kept=int(len(kept)),
                    production_ns=info["simulated_ns"] * (1 - skip / max(len(frames), 1)))
        return kept, info
    atoms = beads_to_atoms(dataset.beads, dataset.positions[0])
    frames, info = run_cg_md(atoms, calc, dataset.temperature_K, dt_fs, int(round(ns * 1e6 / dt_fs)),
                             interval, seed)
    return frames, info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference", type=Path, default=DATA / "ala2_rama_reference.json")
    p.add_argument("--dataset", type=Path, default=DATA / "ala2_cg_5bead.npz")
    p.add_argument("--cg-model", default="ala2-cg", help="CG model file or bundled name; 'prior' = priors alone")
    p.add_argument("--cg-traj", help="compare this CG trajectory (or 'dataset') instead of running CG MD")
    p.add_argument("--cg-ns", type=float, default=0.1, help="CG MD length when no --cg-traj")
    p.add_argument("--cg-dt", type=float, default=2.0, help="CG MD time step (fs)")
    p.add_argument("--cg-interval", type=int, default=100, help="steps between CG frames")
    p.add_argument("--replicas", type=int, default=200,
                   help="independent CG copies sharing --cg-ns (CG model files only)")
    p.add_argument("--equil-ps", type=float, default=20.0, help="per replica, discarded")
    p.add_argument("--backmapper", default="ala2")
    p.add_argument("--backmap-frames", type=int, default=500)
    p.add_argument("--cg-timesteps", default="1,2,4,6,8,10,15,20")
    p.add_argument("--aa-timesteps", default="0.25,0.5,0.75,1,1.5,2")
    p.add_argument("--nve-steps", type=int, default=1000)
    p.add_argument("--dt-tolerance", type=float, default=0.05)
    p.add_argument("--speed-steps", type=int, default=1000)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: fes,backmap,speed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="reference and CG Ramachandran plots side by side")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    reference = json.loads(args.reference.read_text())
    dataset = load_cg_dataset(args.dataset)
    report = {"reference": reference_section(reference), "machine_threads": args.threads}
    cg_calc = cg_calculator(args.cg_model, dataset)
    if args.cg_traj == "dataset":
        cg_xyz = dataset.positions
        report["cg_run"] = {"source": str(args.dataset), "frames": int(len(cg_xyz))}
    elif args.cg_traj:
        import ase.io

        cg_xyz = np.array([a.get_positions() for a in ase.io.read(args.cg_traj, ":")])
        report["cg_run"] = {"source": str(args.cg_traj), "frames": int(len(cg_xyz))}
    elif not {"fes", "backmap"} <= skip:
        t0 = time.perf_counter()
        cg_xyz, info = run_dataset_md(dataset, cg_calc, args.cg_ns, args.cg_dt, args.cg_interval,
                                      args.seed, args.replicas, args.equil_ps)
        report["cg_run"] = {"model": args.cg_model, "ns": args.cg_ns, "timestep_fs": args.cg_dt,
                            "frames": int(len(cg_xyz)), "wall_s": time.perf_counter() - t0, **info}
    if "fes" not in skip:
        report["fes"] = fes_section(cg_xyz, reference)
        if args.plot:
            ref_phi, ref_psi = dataset.extra["phi"], dataset.extra["psi"]
            label = f"CG MD ({args.cg_model})" if "model" in report["cg_run"] else f"CG frames: {args.cg_traj}"
            rama.plot_side_by_side({"all-atom reference (OpenMM)": (ref_phi, ref_psi),
                                    label: rama.bead_phi_psi(cg_xyz)}, args.plot,
                                   temperature_K=dataset.temperature_K)
    if "backmap" not in skip:
        report["backmap"] = backmap_section(cg_xyz, args.backmapper, args.backmap_frames, args.seed)
    if "speed" not in skip:
        report["speed"] = speed_section(dataset, cg_calc, args)
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
