"""Memory a force call keeps for its backward pass, with and without re-gathering, and its time.

    python benchmarks/memory.py [--device cpu|cuda] [--sizes 864 6912] [--models painn,tp]
                                [--repeats 3] [--threads 2] [--json out.json]

For each model (benchmark sizes: PaiNN 128x3 with 20 radial functions, ``tp`` l_max 1, 4 x 32) and
periodic fcc Cu system (a = 3.6 Å, cutoff 5 Å, float32, random weights, the model called on a graph
built once; on the CPU with freed memory kept, as the calculator does), three settings of ``ase_eqgnn.models.layouts.LEAN_GATHER_BYTES``:

- ``plain``: every gathered neighbour copy is kept for the backward pass (threshold out of reach);
- ``default``: the shipped threshold (copies from 256 MiB on are gathered again in the backward);
- ``lean``: every copy is gathered again (threshold 0).

Columns: MiB of the tensors autograd saves during one energy+forces call (distinct storages, through
``torch.autograd.graph.saved_tensors_hooks``: the same on any device), ms per call (median of
``--repeats``, the settings taking turns), and on CUDA the peak of ``torch.cuda.max_memory_allocated``
over the timed calls. Only PaiNN's products use re-gathering; ``tp`` is listed as the reference it
is (its three columns agree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from ase.build import bulk

from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.heap import keep_freed_memory
from ase_eqgnn.models import build_model, layouts

HPARAMS = {"painn": dict(features=128, layers=3, n_radial=20), "tp": dict(l_max=1, layers=4, features=32)}
SETTINGS = {"plain": 2**62, "default": layouts.LEAN_GATHER_BYTES, "lean": 0}
CUTOFF = 5.0


def saved_mib(model, graph) -> float:
    """MiB of the distinct storages autograd saves in one energy+forces call."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(graph, forces=True)
    return sum(storages.values()) / 2**20


def timed_call(model, graph, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = model(graph, forces=True)
    out["forces"].sum().item()  # waits for the device
    return 1e3 * (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[864, 6912], help="Cu atoms (4 n^3)")
    p.add_argument("--models", default="painn,tp")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as the eqgnn-* commands do (the calculator on request)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, ["Cu"], CUTOFF, **HPARAMS[name]).to(device=device, dtype=torch.float32)
        for p_ in model.parameters():
            p_.requires_grad_(False)
        for n_atoms in args.sizes:
            reps = round((n_atoms / 4) ** (1 / 3))
            if 4 * reps**3 != n_atoms:
                raise SystemExit(f"--sizes: {n_atoms} is not 4 n^3 (fcc Cu cubic cells)")
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
            graph = AtomicGraph.from_atoms(atoms, dtype=torch.float32, device=device).with_neighbors(CUTOFF)
            result = {"model": name, "atoms": n_atoms, "pairs": graph.num_edges}
            times = {k: [] for k in SETTINGS}
            peaks = {k: 0 for k in SETTINGS}
            try:
                for setting, threshold in SETTINGS.items():
                    layouts.LEAN_GATHER_BYTES = threshold
                    result[f"saved_mib_{setting}"] = round(saved_mib(model, graph), 1)
                for _ in range(max(1, args.repeats)):
                    for setting, threshold in SETTINGS.items():
                        layouts.LEAN_GATHER_BYTES = threshold
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        times[setting].append(timed_call(model, graph, device))
                        if device.type == "cuda":
                            peaks[setting] = max(peaks[setting], torch.cuda.max_memory_allocated(device))
            except torch.cuda.OutOfMemoryError as err:  # report, go on with the next size
                result["error"] = f"out of memory: {err}"
            finally:
                layouts.LEAN_GATHER_BYTES = SETTINGS["default"]
            for setting in SETTINGS:
                if times[setting]:
                    result[f"ms_{setting}"] = round(statistics.median(times[setting]), 1)
                if device.type == "cuda" and peaks[setting]:
                    result[f"peak_gib_{setting}"] = round(peaks[setting] / 2**30, 2)
            rows.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
            del graph
            if device.type == "cuda":
                torch.cuda.empty_cache()
    cols = ["saved_mib", "ms"] + (["peak_gib"] if device.type == "cuda" else [])
    header = ["model", "atoms"] + [f"{c} {s}" for c in cols for s in SETTINGS]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([r["model"], str(r["atoms"])]
                         + [str(r.get(f"{c}_{s}", "-")) for c in cols for s in SETTINGS]))
    print(f"{args.device}, float32, {args.threads} threads, median of {args.repeats} calls; "
          f"torch {torch.__version__}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": args.threads, "repeats": args.repeats,
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
