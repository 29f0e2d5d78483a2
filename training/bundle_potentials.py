"""Train (or resume) the bundled potentials and register them in the package.

Each bundled potential is trained by the project's own trainer on the project's own data, evaluated on
held-out frames from a different simulation run, copied into ``ase_eqgnn/pretrained/`` and registered
with its training data, family, cutoff and measured test errors (what ``eqgnn-models`` prints).

    python training/bundle_potentials.py ala2 [--max-time 1500] [--threads 1]
    python training/bundle_potentials.py cu-emt [--max-time 1200]

Re-running the same command resumes the run in ``training/runs/`` (and registers again at the end).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ase_eqgnn.pretrained import register
from ase_eqgnn.train import config_from_dict, evaluate_model, load_config, train

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = ROOT / "ase_eqgnn" / "pretrained"

RECIPES = {
    "ala2": {
        "config": "training/configs/ala2.yaml",
        "overrides": {"out": "training/runs/ala2_bundle"},
        "test": ("training/data/ala2_test.h5", {"energies": "training/data/ala2_test.npz"}),
        "training_data": "OpenMM amber14 + OBC2 implicit solvent, 300 K Langevin: "
                         "training/data/ala2_train.h5/.npz (2500 frames, seed 1)",
        "test_data": "ala2_test.h5/.npz: 500 frames of an independent run (seed 2)",
        "structure": "ala2",
    },
    "cu-emt": {
        "config": "training/configs/cu_emt.yaml",
        "overrides": {"out": "training/runs/cu_bundle",
                      "hparams": {"features": 32, "layers": 2, "n_radial": 12}},
        "test": ("training/data/cu_emt_test.extxyz", {}),
        "training_data": "ASE EMT fcc Cu (32 atoms), Langevin MD at 300/600/900 K in 5 strained "
                         "cells: training/data/cu_emt.extxyz (150 frames)",
        "test_data": "cu_emt_test.extxyz: 60 frames of independent EMT runs (seed 7)",
        "structure": None,
    },
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--max-time", type=float, help="training wall time, s (default: config's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    recipe = RECIPES[args.name]
    torch.set_num_threads(args.threads)

    overrides = dict(recipe["overrides"], device="cpu", progress=False, num_threads=args.threads)
    if args.max_time:
        overrides["max_time"] = args.max_time
    cfg = config_from_dict(overrides, source="bundle_potentials.py",
                           base=load_config(ROOT / recipe["config"]))
    train(cfg)

    best = ROOT / cfg.out / "best.pt"
    test_file, options = recipe["test"]
    metrics = evaluate_model(str(best), str(ROOT / test_file), dtype="float64",
                             **{k: str(ROOT / v) for k, v in options.items()})
    target = PRETRAINED / f"potential_{args.name}.pt"
    shutil.copyfile(best, target)
    register({
        "name": args.name,
        "kind": "potential",
        "file": target.name,
        "family": cfg.model_name,
        "hparams": cfg.model_hparams,
        "cutoff_A": cfg.cutoff,
        "training_data": recipe["training_data"],
        "test_data": recipe["test_data"],
        "test_metrics": {k: round(float(metrics[k]), 3) for k in
                         ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse")},
        "units": "energy meV/atom, forces meV/Å",
        "structure": recipe["structure"],
    })
    print(f"registered {args.name}: {target} ({target.stat().st_size / 1e6:.2f} MB), test {metrics}")


if __name__ == "__main__":
    main()
