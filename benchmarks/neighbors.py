"""Neighbour-list benchmark: ours (torch cell list) against ASE, matscipy, vesin and torch-cluster.

Periodic fcc Cu (a = 3.6 Å), cutoff 5 Å, full lists, at about 500, 4,000, 32,000 and 108,000 atoms,
and the same positions without pbc. Each tool runs side by side in this one process; pair counts are
checked to agree; the table gives median milliseconds and each anchor's time divided by ours.
Every tool is asked for the same output as ours returns, ``i``, ``j`` and the integer shifts ``S``
(asking vesin for ``i`` alone skips writing the other two and is about 20 % faster at 108k atoms).
The tools take turns within each repeat (interleaved), so a change in machine load hits them alike.

    python benchmarks/neighbors.py [--sizes 500 4000 32000 108000] [--repeats 5] [--threads 2]
        [--device cpu|cuda] [--skip ase,matscipy] [--json out.json]

On ``--device cuda`` ours and vesin-torch run on the GPU (timed up to a device synchronisation) and
ase, matscipy and vesin on the host's CPU threads, the comparisons a GPU user would make.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from ase.build import bulk

from ase_eqgnn.neighbors import neighbor_list

CUTOFF = 5.0


def fcc_copper(n_target: int):
    reps = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.01, seed=0)
    return atoms


def interleaved_median_ms(fns: dict, repeats: dict, sync=lambda: None) -> tuple:
    """Median ms of each callable, the tools taking turns in every repeat; also the first results."""
    first = {}
    for name, fn in fns.items():  # warm-up (and the result, for the pair count)
        first[name] = fn()
        sync()
    times = {name: [] for name in fns}
    for k in range(max(repeats.values())):
        for name, fn in fns.items():
            if k >= repeats[name]:
                continue
            time.sleep(0.01)  # let the previous tool's idle OpenMP threads stop spinning
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}, first


def tools(atoms, periodic: bool, device: str, skip=()):
    """name -> zero-argument callable returning the number of pairs."""
    pos_np = atoms.positions
    cell_np = atoms.cell[:]
    pbc = [periodic] * 3
    pos = torch.tensor(pos_np, device=device)
    cell = torch.tensor(cell_np, device=device)
    out = {"ours": lambda: len(neighbor_list(pos, CUTOFF, cell, pbc)[0])}

    a = atoms.copy()
    a.pbc = pbc
    if len(atoms) <= 40_000:  # ASE's pure-Python list takes minutes beyond this
        from ase.neighborlist import neighbor_list as ase_nl
        out["ase"] = lambda: len(ase_nl("ijS", a, CUTOFF)[0])
    try:
        from matscipy.neighbours import neighbour_list as msp_nl
        out["matscipy"] = lambda: len(msp_nl("ijS", a, CUTOFF)[0])
    except ImportError:
        pass
    try:
        import vesin
        nl = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
        out["vesin"] = lambda: len(nl.compute(points=pos_np, box=cell_np, periodic=periodic,
                                              quantities="ijS")[0])
    except ImportError:
        pass
    try:
        from vesin_torch import NeighborList as VesinTorch
        vt = VesinTorch(cutoff=CUTOFF, full_list=True)
        out["vesin-torch"] = lambda: len(vt.compute(pos, cell, periodic, quantities="ijS")[0])
    except ImportError:
        pass
    if not periodic:
        try:
            from torch_cluster import radius_graph
            max_nb = 200  # fcc at 5 Å has ~78 neighbours; checked against ours below
            out["torch-cluster"] = lambda: radius_graph(pos, CUTOFF, max_num_neighbors=max_nb).shape[1]
        except ImportError:
            pass
    return {name: fn for name, fn in out.items() if name not in skip}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000, 32000, 108000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip", default="", help="comma list of tools to leave out")
    parser.add_argument("--json", help="also write the rows as JSON here (after every size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    names = ["ours", "ase", "matscipy", "vesin", "vesin-torch", "torch-cluster"]
    print(f"fcc Cu, cutoff {CUTOFF} Å, full list, median of {args.repeats} runs, ms "
          f"({args.threads} threads, {args.device}); ratio = anchor time / ours")
    header = f"{'atoms':>7} {'pbc':>4} {'pairs':>9} " + " ".join(f"{n:>13}" for n in names)
    print(header)
    print("-" * len(header))
    for n_target in args.sizes:
        atoms = fcc_copper(n_target)
        for periodic in (True, False):
            fns = tools(atoms, periodic, args.device, args.skip.split(","))
            try:
                results, counts = interleaved_median_ms(
                    fns, {name: 1 if name == "ase" else args.repeats for name in fns}, sync)
            except torch.cuda.OutOfMemoryError as exc:  # report the size and go on with the next
                print(f"{len(atoms):>7} {'yes' if periodic else 'no':>4} out of GPU memory: {exc}")
                rows.append({"atoms": len(atoms), "periodic": periodic, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            counts = {name: int(c) for name, c in counts.items()}
            ref = counts["ours"]
            bad = {k: v for k, v in counts.items() if v != ref}
            if bad:
                raise SystemExit(f"pair counts disagree at {len(atoms)} atoms pbc={periodic}: "
                                 f"ours {ref}, {bad}")
            cells = []
            for name in names:
                if name not in results:
                    cells.append(f"{'-':>13}")
                elif name == "ours":
                    cells.append(f"{results[name]:>13.1f}")
                else:
                    cells.append(f"{results[name]:>7.1f} ({results[name] / results['ours']:.2f}x)"
                                 .rjust(13))
            print(f"{len(atoms):>7} {'yes' if periodic else 'no':>4} {ref:>9} " + " ".join(cells),
                  flush=True)
            rows.append({"atoms": len(atoms), "periodic": periodic, "pairs": ref, "ms": results})
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    periodic_rows = [r for r in rows if r["periodic"] and "ms" in r]
    if len(periodic_rows) >= 2:
        lo, hi = periodic_rows[0], periodic_rows[-1]
        print(f"\nscaling (periodic, ours): {hi['atoms']}/{lo['atoms']} atoms -> "
              f"{hi['ms']['ours'] / lo['ms']['ours']:.1f}x time "
              f"(linear would be {hi['atoms'] / lo['atoms']:.1f}x)")


if __name__ == "__main__":
    main()
