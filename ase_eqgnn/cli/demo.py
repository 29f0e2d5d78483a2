"""``eqgnn-demo``: a short demonstration on a built-in system (periodic fcc Cu)."""

from __future__ import annotations

import argparse
import time

import torch
from ase.build import bulk

from ..neighbors import neighbor_list


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å (default 5)")
    args = parser.parse_args(argv)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=0)
    t0 = time.perf_counter()
    i, j, shifts = neighbor_list(torch.tensor(atoms.positions), args.cutoff,
                                 torch.tensor(atoms.cell[:]), atoms.pbc)
    ms = 1e3 * (time.perf_counter() - t0)
    print(f"fcc Cu, {len(atoms)} atoms, periodic: {len(i)} neighbour pairs within {args.cutoff} Å "
          f"({len(i) / len(atoms):.1f} per atom) in {ms:.1f} ms")


if __name__ == "__main__":
    main()
