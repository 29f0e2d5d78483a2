"""Accuracy benchmark: each model family trained on MD17 aspirin for a fixed wall-time budget.

    python benchmarks/accuracy.py                          # 30 min per model (the brief's budget)
    python benchmarks/accuracy.py --budget 60 --models painn --own-budget 30   # a smoke run
    python benchmarks/accuracy.py --mace-python /work/anchors/mace/bin/python  # + MACE side by side
    python benchmarks/accuracy.py --budget 0 --own-budget 120 --models painn --json a.json  # own data only
    python benchmarks/accuracy.py --merge a.json b.json    # one table from runs made in parallel

Run from the repository root. For every model in ``--models`` (PaiNN 128 features / 3 layers / 20
radial functions; ``tp`` l_max 1 / 4 layers / 32 features, matched to NequIP; EGNN 128 / 3), it trains
with ``training/configs/aspirin_<model>.yaml`` on the shared MD17 split (950 train, 50 validation;
``--md17``, by default ``../shared/data/md17/aspirin`` relative to the repository root, never copied
in) until ``--budget`` seconds of wall time, then reports the test MAE on the 1000 test frames:
energy in meV/atom and meV per molecule, forces in meV/Å, with the wall time and device.

With ``--mace-python`` (the python of a separate environment with mace-torch), MACE is trained by
its own ``mace_run_train`` CLI on the same split (converted to extxyz) for the same wall time: the
run is stopped at the budget, restarted with ``--restart_latest`` only to write its best checkpoint
as a model, which is then evaluated on the same test frames.

With ``--own-budget S > 0`` every model is also trained on the project's own data for S seconds and
its force MAE reported: alanine dipeptide (``training/data/ala2_train`` -> ``ala2_test``) and EMT Cu
(``training/data/cu_emt.extxyz``, a seeded 110 / 10 / 30 frame split).

Published reference points (revised MD17, full training on GPUs): MACE aspirin force MAE 6.6 meV/Å,
NequIP 8.2, PaiNN 16.1. The shared data is the *original* MD17, whose noise floor is higher: compare
the rows of one table, not with the published numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ase_eqgnn.data import read_dataset, split_dataset  # noqa: E402
from ase_eqgnn.train import Trainer, load_config  # noqa: E402
from ase_eqgnn.train.distributed import resolve_device  # noqa: E402

MODELS = ("painn", "tp", "egnn")
ASPIRIN_ATOMS = 21


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_ours(config_path: pathlib.Path, out: pathlib.Path, budget: float, device: str, threads: int,
             **overrides) -> Dict:
    """Train one of our models from a config with a wall-time budget; returns test metrics + timing."""
    frames = {k: overrides.pop(k) for k in list(overrides) if k.endswith("_frames")}
    cfg = load_config(config_path)
    values = {**cfg.to_dict(), "out": str(out), "max_time": budget, "device": device,
              "num_threads": threads, "progress": False, "max_epochs": 100000, **overrides}
    cfg = type(cfg)(**values)
    if out.exists():
        shutil.rmtree(out)  # a benchmark starts fresh (our own output directory only)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, **frames)
    result = trainer.fit()
    trainer.close()
    return {"test": result.test_metrics, "valid": result.best_metrics, "epochs": result.epochs,
            "train_wall_s": result.history[-1]["time"] if result.history else 0.0,
            "total_wall_s": time.perf_counter() - t0, "stop_reason": result.stop_reason,
            "device": device_name(trainer.device),
            "n_parameters": sum(p.numel() for p in trainer.model.parameters())}


# ----------------------------------------------------------------------------------------------- MACE
_MACE_EVAL = r"""
import json, sys, numpy as np, torch, ase.io
from mace.calculators import MACECalculator
model, test, device = sys.argv[1], sys.argv[2], sys.argv[3]
calc = MACECalculator(model_paths=model, device=device, default_dtype="float64")
e, f = [], []
for atoms in ase.io.read(test, ":"):
    ref_e, ref_f = atoms.info["REF_energy"], atoms.arrays["REF_forces"].copy()
    atoms.calc = calc
    e.append((atoms.get_potential_energy() - ref_e) / len(atoms))
    f.append(atoms.get_forces() - ref_f)
e, f = np.array(e), np.concatenate(f)
print(json.dumps({"energy_mae": 1e3 * float(np.abs(e).mean()), "energy_rmse": 1e3 * float(np.sqrt((e**2).mean())),
                  "forces_mae": 1e3 * float(np.abs(f).mean()), "forces_rmse": 1e3 * float(np.sqrt((f**2).mean()))}))
"""


def _write_extxyz(npz: pathlib.Path, path: pathlib.Path) -> None:
    import ase.io

    atoms_list = []
    for frame in read_dataset(npz):
        atoms = frame.to_atoms()
        atoms.calc = None
        atoms.info = {"REF_energy": frame.energy}
        atoms.arrays["REF_forces"] = frame.forces
        atoms_list.append(atoms)
    ase.io.write(path, atoms_list, format="extxyz")


def _run_with_budget(cmd: List[str], budget: Optional[float], log: pathlib.Path, env: Dict) -> int:
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return -1


def run_mace(python: str, md17: pathlib.Path, out: pathlib.Path, budget: float, device: str,
             threads: int) -> Dict:
    """MACE trained by its own CLI for ``budget`` seconds on the same split; test metrics of its best checkpoint."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = {}
    for split in ("train", "val", "test"):
        files[split] = out / f"{split}.xyz"
        _write_extxyz(md17 / f"{split}.npz", files[split])
    dev = "cuda" if resolve_device(device).type == "cuda" else "cpu"
    base = [python, "-m", "mace.cli.run_train", "--name", "mace_aspirin", "--seed", "0",
            "--train_file", str(files["train"]), "--valid_file", str(files["val"]),
            "--test_file", str(files["test"]), "--energy_key", "REF_energy", "--forces_key", "REF_forces",
            "--E0s", "average", "--model", "MACE", "--num_channels", "64", "--max_L", "1",
            "--correlation", "3", "--num_interactions", "2", "--r_max", "5.0",
            "--batch_size", "5", "--valid_batch_size", "10", "--lr", "0.01", "--ema", "--ema_decay", "0.99",
            "--energy_weight", "1.0", "--forces_weight", "100.0", "--error_table", "PerAtomMAE",
            "--default_dtype", "float32", "--device", dev, "--eval_interval", "1",
            "--model_dir", str(out), "--checkpoints_dir", str(out / "checkpoints"),
            "--log_dir", str(out / "logs"), "--results_dir", str(out / "results")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = out / "mace_stdout.log"
    t0 = time.perf_counter()
    rc = _run_with_budget(base + ["--max_num_epochs", "100000"], budget, log, env)
    train_wall = time.perf_counter() - t0
    ckpts = sorted(((int(m.group(1)), p) for p in (out / "checkpoints").glob("*.pt")
                    if (m := re.search(r"epoch-(\d+)", p.name))), key=lambda t: t[0])
    if not ckpts:
        return {"error": f"MACE wrote no checkpoint within {budget:.0f} s (rc {rc}); see {log}",
                "train_wall_s": train_wall}
    epoch = ckpts[-1][0]
    # Restart only to turn the best checkpoint into a model file (no further epochs).
    _run_with_budget(base + ["--max_num_epochs", str(epoch), "--restart_latest"], 1800, log, env)
    models = [p for p in out.glob("mace_aspirin*.model") if "compiled" not in p.name] or list(out.glob("*.model"))
    if not models:
        return {"error": f"MACE did not write a model after the restart; see {log}", "train_wall_s": train_wall}
    done = subprocess.run([python, "-c", _MACE_EVAL, str(models[0]), str(files["test"]), dev],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": f"MACE evaluation failed: {done.stderr[-500:]}", "train_wall_s": train_wall}
    return {"test": json.loads(done.stdout.strip().splitlines()[-1]), "epochs": epoch + 1,
            "train_wall_s": train_wall, "total_wall_s": time.perf_counter() - t0,
            "device": device_name(resolve_device(device))}


# ----------------------------------------------------------------------------------------------- main
def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def print_tables(results: Dict, budget: float, own_budget: float) -> str:
    lines = [f"MD17 aspirin (original MD17; 950 train / 50 valid / 1000 test), wall-time budget {budget:.0f} s per model",
             "", "| model | params | device | epochs | train wall (s) | E MAE (meV/atom) | E MAE (meV) | "
             "F MAE (meV/Å) | F RMSE (meV/Å) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["aspirin"].items():
        if "error" in r:
            lines.append(f"| {name} | | | | {_fmt(r.get('train_wall_s'), 0)} | error: {r['error']} | | | |")
            continue
        t = r["test"]
        lines.append(f"| {name} | {r.get('n_parameters', '—')} | {r['device']} | {r['epochs']} | "
                     f"{r['train_wall_s']:.0f} | {_fmt(t['energy_mae'])} | {_fmt(t['energy_mae'] * ASPIRIN_ATOMS)} | "
                     f"{_fmt(t['forces_mae'])} | {_fmt(t['forces_rmse'])} |")
    if results.get("own"):
        lines += ["", f"Project data, {own_budget:.0f} s per model per dataset (test-set MAE)", "",
                  "| model | ala2 F MAE (meV/Å) | ala2 E MAE (meV/atom) | cu_emt F MAE (meV/Å) | "
                  "cu_emt E MAE (meV/atom) |", "|---|---|---|---|---|"]
        for name, r in results["own"].items():
            a, c = r["ala2"]["test"], r["cu_emt"]["test"]
            lines.append(f"| {name} | {_fmt(a['forces_mae'])} | {_fmt(a['energy_mae'])} | "
                         f"{_fmt(c['forces_mae'])} | {_fmt(c['energy_mae'])} |")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=1800.0,
                   help="wall-time seconds per model (aspirin); 0 skips aspirin")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: painn,tp,egnn")
    p.add_argument("--md17", default="../shared/data/md17/aspirin",
                   help="directory with train/val/test.npz (relative to the repository root)")
    p.add_argument("--own-budget", type=float, default=600.0,
                   help="seconds per model on ala2 and cu_emt (0 = skip)")
    p.add_argument("--mace-python", default=None, help="python of an environment with mace-torch")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="bench_out/accuracy", help="run directories (relative to the repository root)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="print one table from the JSON files of several runs (no training)")
    args = p.parse_args(argv)
    if args.merge:
        merged: Dict = {"aspirin": {}, "own": {}}
        for path in args.merge:
            part = json.loads(pathlib.Path(path).read_text())
            merged["aspirin"].update(part.get("aspirin", {}))
            merged["own"].update(part.get("own", {}))
            merged.setdefault("budget_s", part.get("budget_s") or 0.0)
            if part.get("own"):
                merged["own_budget_s"] = part.get("own_budget_s", 0.0)
        print_tables(merged, merged.get("budget_s", 0.0), merged.get("own_budget_s", 0.0))
        return 0

    os.chdir(ROOT)
    torch.set_num_threads(args.threads)  # also what the device column reports for MACE's subprocess
    md17 = pathlib.Path(args.md17)
    if not (md17 / "train.npz").exists():
        print(f"accuracy.py: no MD17 split at {md17.resolve()}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"accuracy.py: unknown model(s) {bad}; choose from {MODELS}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    configs = ROOT / "training" / "configs"
    results: Dict = {"budget_s": args.budget, "own_budget_s": args.own_budget, "aspirin": {}, "own": {},
                     "torch": torch.__version__}
    md17_paths = {"data": str(md17 / "train.npz"), "valid_data": str(md17 / "val.npz"),
                  "test_data": str(md17 / "test.npz")}
    for name in (models if args.budget > 0 else []):
        print(f"== {name} on aspirin, {args.budget:.0f} s", flush=True)
        results["aspirin"][name] = run_ours(configs / f"aspirin_{name}.yaml", out / f"aspirin_{name}",
                                            args.budget, args.device, args.threads, **md17_paths)
    if args.mace_python and args.budget > 0:
        print(f"== MACE (mace_run_train) on aspirin, {args.budget:.0f} s", flush=True)
        results["aspirin"]["mace"] = run_mace(args.mace_python, md17, out / "aspirin_mace", args.budget,
                                              args.device, args.threads)
    if args.own_budget > 0:
        cu = read_dataset(ROOT / "training" / "data" / "cu_emt.extxyz")
        rest, cu_test = split_dataset(cu, valid_fraction=30 / len(cu), seed=1)
        cu_train, cu_valid = split_dataset(rest, valid_fraction=10 / len(rest), seed=2)
        for name in models:
            hp = load_config(configs / f"aspirin_{name}.yaml").hparams
            print(f"== {name} on ala2 and cu_emt, {args.own_budget:.0f} s each", flush=True)
            results["own"][name] = {
                "ala2": run_ours(configs / "ala2.yaml", out / f"ala2_{name}", args.own_budget, args.device,
                                 args.threads, model=name, hparams=hp),
                "cu_emt": run_ours(configs / "cu_emt.yaml", out / f"cu_emt_{name}", args.own_budget,
                                   args.device, args.threads, model=name, hparams=hp, scheduler="plateau",
                                   train_frames=cu_train, valid_frames=cu_valid, test_frames=cu_test),
            }
    results["table"] = print_tables(results, args.budget, args.own_budget)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
