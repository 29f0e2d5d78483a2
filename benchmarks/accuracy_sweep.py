"""One exploration run for the small-data accuracy study: train for a wall-time budget, test at 300 K and 600 K.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/accuracy_sweep.py NAME --budget 600 \
        --set model=tp --set hparams='{features: 32, l_max: 1, layers: 2, correlation: 3}' \
        [--final-stage 0.2,1000,100,1e-3] [--suite ala2|aspirin] [--log docs/accuracy_sweep.jsonl]

Every ``--set KEY=VALUE`` is a :class:`~ase_eqgnn.train.TrainConfig` key (VALUE parsed as YAML) on top
of ``eqgnn-train``'s own defaults, with ``max_time`` = ``--budget``, ``max_epochs`` left at its
default unless set, one thread, and the suite's files (ala2: ``training/data/ala2_bench_*``, train /
valid / test at 300 K and 600 K; aspirin: the shared MD17 split). The best model (EMA weights) is
evaluated in float64 on each test set; one JSON line per run (settings, epochs, wall time, test
MAE / RMSE) is appended to ``--log``.

``--final-stage F,EW,FW,LR`` is an experiment, not a trainer feature: the last fraction F of the
budget continues from the first stage's last weights with loss weights EW (energy) and FW (forces)
and a constant learning rate LR, keeping the EMA (MACE's "SWA" stage two); the best model of that
stage (by its own validation loss) is the one tested.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

import torch
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ase_eqgnn.train import Trainer, config_from_dict  # noqa: E402
from ase_eqgnn.train.evaluate import evaluate_model  # noqa: E402
from ase_eqgnn.train.losses import LossWeights  # noqa: E402
from ase_eqgnn.train.schedule import EpochScheduler  # noqa: E402

SUITES = {
    "ala2": {"data": "training/data/ala2_bench_train.npz", "valid_data": "training/data/ala2_bench_valid.npz",
             "tests": {"300K": "training/data/ala2_bench_test300.npz",
                       "600K": "training/data/ala2_bench_test600.npz"}},
    "aspirin": {"data": "../shared/data/md17/aspirin/train.npz",
                "valid_data": "../shared/data/md17/aspirin/val.npz",
                "tests": {"test": "../shared/data/md17/aspirin/test.npz"}},
}


def final_stage(trainer: Trainer, budget: float, fraction: float, energy_weight: float,
                forces_weight: float, lr: float) -> None:
    """Continue ``trainer`` (already fitted to (1 - fraction) of the budget) with new loss weights."""
    cfg = trainer.cfg
    trainer.weights = LossWeights(energy_weight, forces_weight, cfg.stress_weight, cfg.loss, cfg.huber_delta)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    trainer.scheduler = EpochScheduler(trainer.optimizer, "plateau", lr, 10**9, 0, lr, 0.5, 10**9)
    trainer.best_loss, trainer.bad_epochs = float("inf"), 0  # the loss changed meaning
    cfg.max_time, cfg.patience, cfg.max_epochs = budget, 0, 10**6
    trainer.fit()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--budget", type=float, default=600.0, help="wall-time seconds of training")
    p.add_argument("--suite", choices=sorted(SUITES), default="ala2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--final-stage", default=None, metavar="F,EW,FW,LR")
    p.add_argument("--out", default="bench_out/sweep")
    p.add_argument("--log", default="bench_out/sweep/sweep.jsonl")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the budget counts: wall time, or this process's CPU time (one thread: "
                        "the wall time the run would take on an idle core, whatever the load)")
    args = p.parse_args(argv)
    import os
    os.chdir(ROOT)
    if args.clock == "cpu":  # the trainer's clock (max_time, the cosine's progress) counts CPU seconds
        import types

        import ase_eqgnn.train.trainer as trainer_module
        trainer_module.time = types.SimpleNamespace(perf_counter=time.process_time)
    torch.set_num_threads(1)
    suite = SUITES[args.suite]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    out = pathlib.Path(args.out) / args.name
    if out.exists():
        shutil.rmtree(out)
    stage = [float(v) for v in args.final_stage.split(",")] if args.final_stage else None
    first_budget = args.budget * (1 - stage[0]) if stage else args.budget
    cfg = config_from_dict({"data": suite["data"], "valid_data": suite["valid_data"], "out": str(out),
                            "max_time": first_budget, "num_threads": 1, "progress": False, **overrides})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=lambda msg: None)
    result = trainer.fit()
    epochs_first = result.epochs
    if stage:
        final_stage(trainer, args.budget, *stage)
    wall = time.perf_counter() - t0
    record = {"name": args.name, "suite": args.suite, "budget_s": args.budget, "clock": args.clock,
              "cpu_s": time.process_time(), "settings": overrides,
              "final_stage": args.final_stage, "epochs": trainer.epoch, "epochs_first_stage": epochs_first,
              "train_s": trainer.elapsed, "wall_s": wall, "stop": trainer.stop_reason,
              "n_parameters": sum(q.numel() for q in trainer.model.parameters()),
              "best_epoch": trainer.best_epoch + 1, "load_1min": os.getloadavg()[0], "tests": {}}
    trainer.close()
    for label, path in suite["tests"].items():
        m = evaluate_model(out / "best.pt", path, dtype="float64", batch_size=32)
        record["tests"][label] = {k: round(float(m[k]), 3) for k in
                                  ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse")}
    line = json.dumps(record)
    pathlib.Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
