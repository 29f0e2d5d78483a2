"""Quick timing of the three model families: energy + forces per call on fcc Cu, 108 atoms.

Sizes are the benchmark sizes used throughout: PaiNN 128 features x 3 layers x 20 radial functions
(SchNetPack's), tp l_max 1 x 4 layers x 32 features (NequIP's), EGNN 128 features x 3 layers.
Cutoff 5 Å (about 4,500 edges), float32, every atom moved before each call (neighbour list rebuilt,
not timed). Prints the median and minimum wall time per call and the median process CPU time per
call (summed over threads). On a shared, oversubscribed machine the wall times include waiting for
a core; with ``--threads 1`` the CPU time is then the better estimate of the uncontended cost.

    python benchmarks/models_quick.py [--threads 2] [--calls 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from ase.build import bulk

from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.models import build_model, count_parameters

MODELS = {
    "painn": dict(features=128, layers=3, n_radial=20),
    "tp": dict(l_max=1, layers=4, features=32),
    "egnn": dict(features=128, layers=3),
}


def time_model(name: str, hparams: dict, calls: int, device: str, cutoff: float = 5.0):
    torch.manual_seed(0)
    model = build_model(name, ["Cu"], cutoff, **hparams).to(device=device, dtype=torch.float32)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)  # 108 atoms
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()
    times, cpu, edges = [], [], 0
    for k in range(calls + 3):  # 3 warm-up calls
        atoms.positions = base + 0.05 * rng.standard_normal(base.shape)
        graph = AtomicGraph.from_atoms(atoms, dtype=torch.float32, device=device).with_neighbors(cutoff)
        edges = graph.num_edges
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(graph, forces=True)
        out["forces"].cpu()
        if k >= 3:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"name": name, "params": count_parameters(model), "edges": edges,
            "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "cpu_ms": 1e3 * statistics.median(cpu)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"fcc Cu 108 atoms, cutoff 5 Å, float32, {args.device}, {args.threads} threads, "
          f"{args.calls} calls (energy + forces)")
    print(f"{'model':<8}{'size':<36}{'params':>9}{'edges':>7}{'median ms':>11}{'min ms':>9}"
          f"{'cpu ms':>9}")
    for name in args.models:
        r = time_model(name, MODELS[name], args.calls, args.device)
        size = ",".join(f"{k}={v}" for k, v in MODELS[name].items())
        print(f"{name:<8}{size:<36}{r['params']:>9}{r['edges']:>7}{r['median_ms']:>11.1f}"
              f"{r['min_ms']:>9.1f}{r['cpu_ms']:>9.1f}")


if __name__ == "__main__":
    main()
