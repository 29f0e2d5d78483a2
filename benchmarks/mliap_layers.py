"""What one ML-IAP rank pays for its ghost shell, and what per-layer pruning saves (issue 17).

One rank of an MPI run evaluates its own atoms plus the ghost atoms within ``layers`` pairs. Here the
rank's subdomain is a box corner of side ``a`` (or a half-box slab, as on 2 ranks) inside periodic fcc
Cu of 32,000 atoms, and the time of one energy-and-pair-force evaluation of ``cu-emt`` (float32, one
thread) is compared between

- ``one graph``: every layer over every pair with an end within ``layers - 1`` pairs of the rank's
  atoms (the rule before per-layer pruning), and
- ``per layer``: what :class:`EqGNNMLIAP` does now: layer k (0-based) of L only sums over the pairs
  into atoms within ``L - 1 - k`` pairs (:class:`ase_eqgnn.models.neighborhood.Layered`).

Both give the same local energies and pair forces (tests/test_layouts.py); this measures the cost.

    OMP_NUM_THREADS=1 python benchmarks/mliap_layers.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from ase.build import bulk

from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.lammps.model import (energies_and_pair_gradients, hop_distances, load_potential, prepare,
                                    prune_to_hops)


def best_times(fns, repeats):
    """The fastest of ``repeats`` calls of each function, after one warm-up call each; the functions
    take turns, so a change in the machine's load hits them alike."""
    best = [float("inf")] * len(fns)
    for fn in fns:
        fn()
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cu-emt")
    p.add_argument("--sides", type=float, nargs="+", default=[14.4, 18.05, 36.1],
                   help="subdomain sides (Å); half the box (36.1) is a 2-rank slab")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, _ = load_potential(args.model)
    model = prepare(model, "float32", torch.device("cpu"))
    layers = int(model.config["hparams"]["layers"])
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(20)
    atoms.rattle(0.05, seed=1)
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff)
    pos, edges = graph.positions.float(), graph.edge_index
    vec = pos[edges[1]] - pos[edges[0]] + graph.shifts.float() @ graph.cell[0].float()
    species = model.species_index(graph.numbers)
    box = float(atoms.cell[0, 0])
    rows = []
    print(f"{args.model}, {layers} layers, fcc Cu {len(atoms)} atoms; best of {args.repeats}")
    print(f"{'side Å':>7} {'own':>6} {'evaluated':>9} {'pairs one graph':>15} {'per layer':>22} "
          f"{'one graph s':>11} {'per layer s':>11} {'speed-up':>8}")
    for side in args.sides:
        slab = side >= box / 2 - 1e-6
        inside = pos[:, 0] < side
        if not slab:
            inside &= (pos[:, 1] < side) & (pos[:, 2] < side)
        local = inside.nonzero().squeeze(1)
        nodes, kept, sub, hop = prune_to_hops(edges, len(atoms), local, layers)
        sp, sub_vec = species[nodes], vec[kept]
        # the rule before: one graph of the pairs with either end within layers - 1 pairs
        h = hop_distances(edges, len(atoms), local, layers)
        either = (h[edges[0]] < layers) | (h[edges[1]] < layers)
        renumber = torch.full((len(atoms),), -1, dtype=torch.long)
        renumber[nodes] = torch.arange(nodes.numel())
        old_edges, old_vec = renumber[edges[:, either]], vec[either]
        own = hop <= 0

        def one_graph():
            x = old_vec.detach().requires_grad_(True)
            e = model.energies_from_edges(sp, old_edges, x)
            torch.autograd.grad(e[own].sum(), x)

        def per_layer():
            energies_and_pair_gradients(model, sp, sub, sub_vec, hop)

        t_old, t_new = best_times([one_graph, per_layer], args.repeats)
        layered = model.partial_neighborhood(sub, nodes.numel(), hop, 0)
        per = [sub.shape[1] if ids is None else ids.numel()
               for _, ids in map(layered.layer, range(layers))]
        row = {"side_A": side, "own": local.numel(), "evaluated": nodes.numel(),
               "pairs_one_graph": old_edges.shape[1] * layers, "pairs_per_layer": per,
               "one_graph_s": t_old, "per_layer_s": t_new, "speedup": t_old / t_new}
        rows.append(row)
        print(f"{side:7.2f} {row['own']:6d} {row['evaluated']:9d} {old_edges.shape[1]:>9d} x {layers} "
              f"{' + '.join(map(str, per)):>22} {t_old:11.3f} {t_new:11.3f} {t_old / t_new:7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "repeats": args.repeats, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
