"""The training loop: data -> model -> AdamW steps, EMA, validation, checkpoints, logs and plots.

>>> from ase_eqgnn.train import TrainConfig, train
>>> result = train(TrainConfig(data="training/data/cu_emt.extxyz", out="run1", max_epochs=50))  # doctest: +SKIP
>>> result.best_metrics["forces_mae"]    # meV/Å on the validation set, EMA weights   # doctest: +SKIP

One epoch: every global batch of ``batch_size`` structures (a seeded permutation per epoch) gives one
AdamW step on the weighted loss of :mod:`.losses` (forces by autograd with ``create_graph=True``),
gradient-norm clipping, then an EMA update. The EMA weights are validated (MAE/RMSE in meV/atom,
meV/Å, meV/Å^3), drive the learning-rate schedule and early stopping, and are saved in ``best.pt``
(plain :func:`ase_eqgnn.save_model` format). Every epoch ends with an atomic ``last.pt`` (see
:mod:`.resume`) and a rewritten ``log.csv``; re-running with the same ``out`` directory resumes.

Files in ``out``: ``config.yaml`` (resolved), ``last.pt``, ``best.pt``, ``log.csv``,
``learning_curve.png``, ``parity_valid.png`` (and ``parity_test.png``), ``metrics.json``.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .. import heap
from ..checkpoint import save_model
from ..data.readers import Frame, read_dataset, split_dataset
from ..models import build_model
from ..models.blocks import normalize_species
from . import distributed as ddp
from .config import RESUME_MUTABLE_KEYS, TrainConfig, save_config
from .data import EpochBatches, Sample, build_samples, dataset_statistics, make_loader
from .ema import make_ema
from .losses import GlobalCounts, LossWeights, loss_terms
from .metrics import ErrorSums, Predictions, evaluate
from .resume import (TrainStateError, config_differences, load_train_state, rng_state, save_train_state,
                     set_rng_state)
from .schedule import EpochScheduler

__all__ = ["Trainer", "TrainResult", "train", "load_frames", "LOG_COLUMNS"]

LOG_COLUMNS = ("epoch", "time", "lr", "train_loss", "valid_loss", "energy_mae", "energy_rmse",
               "forces_mae", "forces_rmse")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` reports (metrics in meV/atom, meV/Å, meV/Å^3)."""

    out: str
    epochs: int
    best_epoch: int
    best_valid_loss: float
    best_metrics: Dict[str, float]
    test_metrics: Optional[Dict[str, float]] = None
    stop_reason: str = "max_epochs"
    history: List[Dict[str, float]] = field(default_factory=list)


def load_frames(cfg: TrainConfig) -> Tuple[List[Frame], List[Frame], Optional[List[Frame]]]:
    """(train, valid, test) frames as the config describes (explicit files or a seeded split)."""
    if not cfg.data:
        raise ValueError("no training data: set 'data' in the config or pass --data PATH")
    opts = dict(format=cfg.format, energy_unit=cfg.energy_unit, length_unit=cfg.length_unit)
    frames = read_dataset(cfg.data, energies=cfg.energies, topology=cfg.topology, index=cfg.index, **opts)
    if cfg.valid_data:
        train_frames = frames
        valid_frames = read_dataset(cfg.valid_data, energies=cfg.valid_energies, topology=cfg.topology, **opts)
    elif cfg.valid_fraction > 0:
        if len(frames) < 2:
            raise ValueError(f"{cfg.data} has {len(frames)} frame: too few to split off a validation set "
                             "(give valid_data or set valid_fraction 0)")
        train_frames, valid_frames = split_dataset(frames, cfg.valid_fraction, seed=cfg.seed,
                                                   contiguous=cfg.split == "contiguous")
    else:
        train_frames, valid_frames = frames, []
    test_frames = (read_dataset(cfg.test_data, energies=cfg.test_energies, topology=cfg.topology, **opts)
                   if cfg.test_data else None)
    return train_frames, valid_frames, test_frames


def _e0_by_number(e0: Optional[Dict[Any, float]]) -> Optional[Dict[int, float]]:
    if e0 is None:
        return None
    from ase.data import atomic_numbers

    out = {}
    for key, value in e0.items():
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            z = int(key)
        elif key in atomic_numbers:
            z = atomic_numbers[key]
        else:
            raise ValueError(f"e0: unknown element {key!r} (use symbols such as 'Cu' or atomic numbers)")
        out[z] = float(value)
    return out


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _nan_to_none(d: Dict[str, float]) -> Dict[str, Optional[float]]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class Trainer:
    """Set up a run from a :class:`TrainConfig` (reading data unless frames are given); :meth:`fit` trains.

    Parameters
    ----------
    config : the run's settings.
    train_frames, valid_frames, test_frames : frames to use instead of reading ``config.data`` etc.
    log : where progress lines go (rank 0 only); default ``print`` to stdout.
    """

    def __init__(self, config: TrainConfig, train_frames: Optional[Sequence[Frame]] = None,
                 valid_frames: Optional[Sequence[Frame]] = None,
                 test_frames: Optional[Sequence[Frame]] = None, log=None):
        self.cfg = cfg = config
        cfg.validate()
        self.device = ddp.resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = ddp.init_distributed(self.device)
        if cfg.batch_size < self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the number of processes "
                             f"{self.dist.world_size}: every process needs a share of each batch")
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.keep_freed_memory and self.device.type == "cpu":
            heap.keep_freed_memory()
        self._log = log or (lambda msg: print(msg, flush=True))
        self.out = cfg.out
        self.dtype = _DTYPES[cfg.dtype]
        self.valid_dtype = _DTYPES[cfg.valid_dtype or cfg.dtype]
        self.weights = LossWeights(cfg.energy_weight, cfg.forces_weight, cfg.stress_weight, cfg.loss,
                                   cfg.huber_delta)

        # ---- data
        if train_frames is None:
            train_frames, read_valid, read_test = load_frames(cfg)
            valid_frames = read_valid if valid_frames is None else valid_frames
            test_frames = read_test if test_frames is None else test_frames
        self.train_samples = build_samples(list(train_frames), cfg.cutoff)
        self.valid_samples = build_samples(list(valid_frames), cfg.cutoff) if valid_frames else []
        self.test_samples = build_samples(list(test_frames), cfg.cutoff) if test_frames else []
        present = sorted({int(z) for s in self.train_samples for z in s.graph.numbers.tolist()})
        self.species = normalize_species(cfg.species) if cfg.species else present
        missing = sorted(set(present) - set(self.species))
        if missing:
            raise ValueError(f"the training data contain element(s) Z={missing} not in species {self.species}")
        for name, samples in (("validation", self.valid_samples), ("test", self.test_samples)):
            extra = sorted({int(z) for s in samples for z in s.graph.numbers.tolist()} - set(self.species))
            if extra:
                raise ValueError(f"the {name} data contain element(s) Z={extra} that the training data "
                                 f"lack (model species {self.species})")
        self._has_energy = np.array([s.energy is not None for s in self.train_samples])
        self._force_atoms = np.array([s.n_atoms if s.forces is not None else 0 for s in self.train_samples])
        self._has_stress = np.array([s.stress is not None for s in self.train_samples])
        self.train_stress = bool(self._has_stress.any() and cfg.stress_weight > 0)
        self.train_forces = bool(self._force_atoms.any() and cfg.forces_weight > 0)

        # ---- model, optimizer, schedule, EMA (seeded: every process builds the same initial model)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        e0, scale, shift = dataset_statistics(self.train_samples, self.species, _e0_by_number(cfg.e0), cfg.scale)
        model = build_model(cfg.model, self.species, cfg.cutoff, hparams=dict(cfg.hparams))
        with torch.no_grad():
            model.E0.copy_(torch.as_tensor(e0))
            model.scale.fill_(scale)
            model.shift.fill_(shift)
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = EpochScheduler(self.optimizer, cfg.scheduler, cfg.lr, cfg.max_epochs,
                                        cfg.warmup_epochs, cfg.min_lr, cfg.lr_factor, cfg.lr_patience,
                                        max_time=cfg.max_time)
        self.ema = make_ema(self.model, cfg.ema_decay)
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.elapsed = 0.0
        self.history: List[Dict[str, float]] = []
        self.stop_reason = ""
        self.resumed = self._maybe_resume()
        self.ddp_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    # ------------------------------------------------------------------ paths and state
    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _state(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict(),
            "epoch": self.epoch, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "elapsed": self.elapsed, "history": self.history,
            "config": self.cfg.to_dict(), "model_config": self.model.config, "rng": rng_state(),
        }

    def _maybe_resume(self) -> bool:
        """Load ``out/last.pt`` when it exists; refuse when the run it belongs to differs."""
        last = self.path("last.pt")
        if not os.path.exists(last):
            return False
        state = load_train_state(last, map_location=self.device)
        diff = config_differences(state["config"], self.cfg.to_dict(), RESUME_MUTABLE_KEYS)
        if diff:
            details = "; ".join(f"{k}: {state['config'].get(k)!r} -> {self.cfg.to_dict().get(k)!r}" for k in diff)
            raise TrainStateError(
                f"{last} belongs to a run with a different config ({details}). Use another --out "
                "directory for a new run, or the same settings to resume this one.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.elapsed = float(state["elapsed"])
        self.history = [dict(r) for r in state["history"]]
        set_rng_state(state["rng"])
        return True

    # ------------------------------------------------------------------ helpers
    def _say(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (keeps the processes in step)."""
        if not self.dist.enabled:
            return flag
        t = ddp.all_reduce_sum(torch.tensor([float(flag)]), self.dist, self.device)
        return bool(t.item() > 0)

    def _counts(self, indices: np.ndarray) -> GlobalCounts:
        return GlobalCounts(int(self._has_energy[indices].sum()), int(self._force_atoms[indices].sum()),
                            int(self._has_stress[indices].sum()))

    def _valid_model(self) -> torch.nn.Module:
        m = self.ema.module
        return m if self.valid_dtype == self.dtype else copy.deepcopy(m).to(self.valid_dtype)

    def _write_log(self) -> None:
        has_stress = any(not math.isnan(r.get("stress_mae", math.nan)) for r in self.history)
        cols = list(LOG_COLUMNS) + (["stress_mae", "stress_rmse"] if has_stress else [])
        tmp = self.path("log.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in self.history:
                w.writerow([int(r["epoch"]) if c == "epoch" else _fmt(r.get(c, math.nan)) for c in cols])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path("log.csv"))

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed run may have left (never the finished files)."""
        for name in os.listdir(self.out):
            if name.endswith(".tmp") and name.startswith(("last.pt.", "best.pt.", "log.csv")):
                try:
                    os.unlink(self.path(name))
                except OSError:
                    pass

    def _time_left(self, start: float) -> bool:
        return self.cfg.max_time is None or self.elapsed + (time.perf_counter() - start) < self.cfg.max_time

    # ------------------------------------------------------------------ the loop
    def train_epoch(self, start: float) -> Tuple[float, bool]:
        """One epoch of optimizer steps; returns (mean global training loss, stopped early for time)."""
        cfg = self.cfg
        batches = EpochBatches(len(self.train_samples), cfg.batch_size, True, cfg.seed,
                               self.dist.rank, self.dist.world_size)
        batches.set_epoch(self.epoch)
        global_batches = batches.global_batches()
        loader = make_loader(self.train_samples, batches, cfg.num_workers)
        self.ddp_model.train()
        total = torch.zeros((), dtype=torch.float64)
        steps = 0
        out_of_time = False
        bar = tqdm(loader, total=len(global_batches), desc=f"epoch {self.epoch + 1}/{cfg.max_epochs}",
                   disable=not (cfg.progress and self.dist.is_main), leave=False, dynamic_ncols=True,
                   file=sys.stderr)
        for batch, indices in zip(bar, global_batches):
            batch = batch.to(self.device)
            counts = self._counts(indices)
            stress = self.train_stress and counts.stress > 0 and bool(batch.stress_mask.any())
            out = self.ddp_model(batch.graph, forces=self.train_forces, stress=stress,
                                 create_graph=self.train_forces or stress)
            terms = loss_terms(out, batch, self.weights, counts)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                # DDP compares the strides of [1, n] gradients strictly; harmless, and noisy.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                (terms["total"] * self.dist.world_size).backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
            self.ema.update_parameters(self.model)
            total += terms["total"].detach().double().cpu()
            steps += 1
            if cfg.progress and self.dist.is_main:
                bar.set_postfix(loss=f"{terms['total'].item() * self.dist.world_size:.4g}")
            if cfg.max_time is not None and self._agree(not self._time_left(start)):
                out_of_time = True
                break
        bar.close()
        total = ddp.all_reduce_sum(total, self.dist, self.device)
        return float(total) / max(steps, 1), out_of_time

    def validate(self, samples: Sequence[Sample], predictions: Optional[Predictions] = None,
                 model: Optional[torch.nn.Module] = None) -> ErrorSums:
        """Error sums of the EMA model (or ``model``) on ``samples``, combined over processes."""
        model = model if model is not None else self._valid_model()
        if predictions is not None:  # gathered on this process alone
            return evaluate(model, samples, self.cfg.eval_batch_size, self.weights, self.device,
                            predictions=predictions)
        return evaluate(model, samples, self.cfg.eval_batch_size, self.weights, self.device,
                        self.dist.rank, self.dist.world_size,
                        reduce=lambda t: ddp.all_reduce_sum(t, self.dist, self.device))

    def _should_stop(self, start: float) -> str:
        cfg = self.cfg
        if self.epoch >= cfg.max_epochs:
            return "max_epochs"
        if cfg.patience and self.bad_epochs >= cfg.patience:
            return "early_stopping"
        if cfg.max_time is not None:
            last = (self.history[-1]["time"] - (self.history[-2]["time"] if len(self.history) > 1 else 0.0)
                    if self.history else 0.0)
            now = self.elapsed + (time.perf_counter() - start)
            if self._agree(now + last > cfg.max_time):
                return "max_time"
        return ""

    def fit(self) -> TrainResult:
        """Train until max_epochs, early stopping or max_time; write the run directory; return results."""
        cfg = self.cfg
        if self.dist.is_main:
            os.makedirs(self.out, exist_ok=True)
            self._remove_stale_temporaries()
            save_config(cfg, self.path("config.yaml"))
        if self.resumed:
            self._say(f"resuming {self.path('last.pt')} after epoch {self.epoch} "
                      f"(best valid loss {self.best_loss:.4g} at epoch {self.best_epoch + 1})")
        else:
            self._say(f"training {cfg.model} on {len(self.train_samples)} frames "
                      f"({len(self.valid_samples)} validation), species {self.species}, "
                      f"{sum(p.numel() for p in self.model.parameters())} parameters, device {self.device}"
                      f"{f', {self.dist.world_size} processes' if self.dist.enabled else ''}")
        start = time.perf_counter()  # start of the time not yet counted in self.elapsed
        while not (reason := self._should_stop(start)):
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, out_of_time = self.train_epoch(start)
            if self.valid_samples:
                sums = self.validate(self.valid_samples)
                valid_loss, metrics = sums.loss(self.weights), sums.metrics()
            else:
                valid_loss, metrics = train_loss, {k: math.nan for k in ErrorSums().metrics()}
            self.scheduler.step(self.epoch, valid_loss, self.elapsed + (time.perf_counter() - start))
            improved = valid_loss < self.best_loss
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, self.epoch, 0
            else:
                self.bad_epochs += 1
            now = time.perf_counter()
            self.elapsed += now - start
            start = now
            row = {"epoch": self.epoch + 1, "time": self.elapsed, "lr": lr, "train_loss": train_loss,
                   "valid_loss": valid_loss, **metrics}
            self.history.append(row)
            self.epoch += 1
            if self.dist.is_main:
                if improved:
                    save_model(self.ema.module, self.path("best.pt"), metadata=self._metadata(metrics))
                save_train_state(self._state(), self.path("last.pt"))
                self._write_log()
            self._say(self._epoch_line(row, improved))
            if out_of_time:
                reason = "max_time"
                break
        self.stop_reason = reason
        return self._finish()

    # ------------------------------------------------------------------ reporting
    def _metadata(self, metrics: Dict[str, float]) -> Dict[str, Any]:
        return {"trained_by": "eqgnn-train", "epoch": self.epoch, "data": self.cfg.data,
                "valid_metrics": _nan_to_none(metrics),
                "units": {"energy_mae": "meV/atom", "forces_mae": "meV/Å", "stress_mae": "meV/Å^3"}}

    def _epoch_line(self, row: Dict[str, float], improved: bool) -> str:
        parts = [f"epoch {int(row['epoch']):4d}", f"t {row['time']:7.1f}s", f"lr {row['lr']:.2e}",
                 f"train {row['train_loss']:.4g}", f"valid {row['valid_loss']:.4g}"]
        if not math.isnan(row["energy_mae"]):
            parts.append(f"E {row['energy_mae']:.3g} meV/atom")
        if not math.isnan(row["forces_mae"]):
            parts.append(f"F {row['forces_mae']:.3g} meV/Å")
        if not math.isnan(row.get("stress_mae", math.nan)):
            parts.append(f"S {row['stress_mae']:.3g} meV/Å³")
        return "  ".join(parts) + ("  *" if improved else "")

    def _finish(self) -> TrainResult:
        from ..checkpoint import load_model
        from .plots import plot_learning_curve, plot_parities

        best_row = self.history[self.best_epoch] if 0 <= self.best_epoch < len(self.history) else {}
        best_metrics = {k: v for k, v in best_row.items() if k.endswith(("_mae", "_rmse"))}
        test_metrics = None
        if self.dist.is_main and self.history:
            self._say(f"stopped ({self.stop_reason}) after epoch {self.epoch}; best epoch "
                      f"{self.best_epoch + 1}, valid loss {self.best_loss:.4g}")
            plot_learning_curve(self.path("log.csv"), self.path("learning_curve.png"))
            best = load_model(self.path("best.pt"), map_location=self.device).to(self.valid_dtype)
            parity_set = self.valid_samples or self.train_samples
            preds = Predictions()
            self.validate(parity_set, predictions=preds, model=best)
            plot_parities(preds.arrays(), self.path("parity_valid.png"),
                          title="validation set" if self.valid_samples else "training set")
            if self.test_samples:
                preds = Predictions()
                test_metrics = self.validate(self.test_samples, predictions=preds, model=best).metrics()
                plot_parities(preds.arrays(), self.path("parity_test.png"), title="test set")
                self._say("test: " + ", ".join(f"{k} {v:.4g}" for k, v in test_metrics.items()
                                               if not math.isnan(v)))
            with open(self.path("metrics.json"), "w") as f:
                json.dump({"stop_reason": self.stop_reason, "epochs": self.epoch,
                           "best_epoch": self.best_epoch + 1, "best_valid_loss": self.best_loss,
                           "valid": _nan_to_none(best_metrics),
                           "test": None if test_metrics is None else _nan_to_none(test_metrics),
                           "wall_time_s": self.elapsed, "device": str(self.device),
                           "world_size": self.dist.world_size}, f, indent=1)
        ddp.barrier(self.dist)
        return TrainResult(self.out, self.epoch, self.best_epoch + 1, self.best_loss, best_metrics,
                           test_metrics, self.stop_reason, list(self.history))

    def close(self) -> None:
        """Leave the process group (if this trainer joined one)."""
        ddp.shutdown(self.dist)


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """Build a :class:`Trainer` for ``config`` and run it (resuming from ``out/last.pt`` if present)."""
    trainer = Trainer(config, **kwargs)
    try:
        return trainer.fit()
    finally:
        trainer.close()
