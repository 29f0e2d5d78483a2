"""One exploration run for the small-data accuracy study: train for a wall-time budget, test at 300 K and 600 K.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/accuracy_sweep.py NAME --budget 600 \
        --set model=tp --set hparams='{features: 32, l_max: 1, layers: 2, correlation: 3}' \
        [--set final_fraction=0.2] [--suite ala2|aspirin] [--log docs/accuracy_sweep.jsonl]

Every ``--set KEY=VALUE`` is a :class:`~ase_eqgnn.train.TrainConfig` key (VALUE parsed as YAML) on top
of ``eqgnn-train``'s own defaults, with ``max_time`` = ``--budget``, ``max_epochs`` left at its
default unless set, one thread, and the suite's files (ala2: ``training/data/ala2_bench_*``, train /
valid / test at 300 K and 600 K; aspirin: the shared MD17 split). The best model (EMA weights) is
evaluated in float64 on each test set; one JSON line per run (settings, epochs, wall time, test
MAE / RMSE) is appended to ``--log``. The trainer's final stage (MACE's SWA-like stage two) is
its config keys: ``--set final_fraction=0.2 --set final_lr=1e-4 --set final_energy_weight=1000``.
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

SUITES = {
    "ala2": {"data": "training/data/ala2_bench_train.npz", "valid_data": "training/data/ala2_bench_valid.npz",
             "tests": {"300K": "training/data/ala2_bench_test300.npz",
                       "600K": "training/data/ala2_bench_test600.npz"}},
    "aspirin": {"data": "../shared/data/md17/aspirin/train.npz",
                "valid_data": "../shared/data/md17/aspirin/val.npz",
                "tests": {"test": "../shared/data/md17/aspirin/test.npz"}},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--budget", type=float, default=600.0, help="wall-time seconds of training")
    p.add_argument("--suite", choices=sorted(SUITES), default="ala2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
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

        import ase_eqgnn.train.loop as loop_module
        loop_module.time = types.SimpleNamespace(perf_counter=time.process_time)
    torch.set_num_threads(1)
    suite = SUITES[args.suite]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    out = pathlib.Path(args.out) / args.name
    if out.exists():
        shutil.rmtree(out)
    cfg = config_from_dict({"data": suite["data"], "valid_data": suite["valid_data"], "out": str(out),
                            "max_time": args.budget, "num_threads": 1, "progress": False, **overrides})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=lambda msg: None)
    trainer.fit()
    loop = trainer.loop
    wall = time.perf_counter() - t0
    record = {"name": args.name, "suite": args.suite, "budget_s": args.budget, "clock": args.clock,
              "cpu_s": time.process_time(), "settings": overrides,
              "epochs": loop.epoch, "train_s": loop.elapsed, "wall_s": wall, "stop": trainer.stop_reason,
              "n_parameters": sum(q.numel() for q in trainer.model.parameters()),
              "best_epoch": loop.best_epoch + 1, "load_1min": os.getloadavg()[0], "tests": {}}
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
