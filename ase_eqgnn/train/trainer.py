"""Training a potential: data -> model -> AdamW steps, EMA, validation, checkpoints, logs and plots.

>>> from ase_eqgnn.train import TrainConfig, train
>>> result = train(TrainConfig(data="training/data/cu_emt.extxyz", out="run1", max_epochs=50))  # doctest: +SKIP
>>> result.best_metrics["forces_mae"]    # meV/Å on the validation set, EMA weights   # doctest: +SKIP

One epoch: every global batch of ``batch_size`` structures (a seeded permutation per epoch) gives one
AdamW step on the weighted loss of :mod:`.losses` (forces by autograd with ``create_graph=True``),
gradient-norm clipping, then an EMA update. The EMA weights are validated (MAE/RMSE in meV/atom,
meV/Å, meV/Å^3), drive the learning-rate schedule and early stopping, and are saved in ``best.pt``
(plain :func:`ase_eqgnn.save_model` format, with the training data's shortest distance per element
pair as ``model.domain``, see :mod:`ase_eqgnn.domain`). The epoch loop, ``last.pt``, ``log.csv`` and
the guard on the run folder are the ones every trainer shares (:mod:`.loop`, :mod:`.run_dir`):
re-running with the same ``out`` resumes, and a folder holding anything else is refused.

Files in ``out``: ``config.yaml`` (resolved), ``last.pt``, ``best.pt``, ``log.csv``,
``learning_curve.png``, ``parity_valid.png`` (and ``parity_test.png``), ``metrics.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .. import heap
from ..checkpoint import save_model
from ..checkpoint.potential import check_model_size
from ..data.readers import Frame
from ..domain import shortest_distances
from ..dtypes import resolve_dtype
from ..models import build_model
from ..models.blocks import normalize_species
from . import distributed as ddp
from .config import RESUME_MUTABLE_KEYS, TrainConfig
from .data import (EpochBatches, Sample, build_samples, dataset_statistics, e0_by_number, load_frames,
                   make_loader)
from .ema import make_ema
from .loop import EpochLoop, EpochTask
from .losses import GlobalCounts, LossWeights, loss_terms
from .metrics import ErrorSums, Predictions, evaluate
from .run_dir import RunDirectory
from .schedule import EpochScheduler, state_kind

__all__ = ["Trainer", "TrainResult", "train", "LOG_COLUMNS", "OUTPUTS"]

LOG_COLUMNS = ("epoch", "time", "lr", "train_loss", "valid_loss", "energy_mae", "energy_rmse",
               "forces_mae", "forces_rmse")
#: What a potential's run writes besides config.yaml, last.pt and log.csv.
OUTPUTS = ("best.pt", "learning_curve.png", "parity_valid.png", "parity_test.png", "metrics.json")


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


def _nan_to_none(d: Dict[str, float]) -> Dict[str, Optional[float]]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class Trainer(EpochTask):
    """Set up a run from a :class:`TrainConfig` (reading data unless frames are given); :meth:`fit` trains.

    The run folder is checked first (:class:`~.run_dir.RunFolderError` when it holds anything but
    this run), so a refused run has read no data and written nothing.

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
        self.run_dir = RunDirectory(cfg.out, "potential", cfg.to_dict(), RESUME_MUTABLE_KEYS, OUTPUTS)
        resume = self.run_dir.check()
        self.device = ddp.resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = ddp.init_distributed(self.device)
        if cfg.effective_batch_size < self.dist.world_size:
            raise ValueError(f"batch_size {cfg.effective_batch_size} is smaller than the number of processes "
                             f"{self.dist.world_size}: every process needs a share of each batch")
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.keep_freed_memory and self.device.type == "cpu":
            heap.keep_freed_memory()
        self._log = log or (lambda msg: print(msg, flush=True))
        self.out = cfg.out
        self.dtype = resolve_dtype(cfg.dtype)
        self.valid_dtype = resolve_dtype(cfg.valid_dtype or cfg.dtype)
        self.weights = LossWeights(cfg.energy_weight, cfg.forces_weight, cfg.stress_weight, cfg.loss,
                                   cfg.huber_delta)
        self._setup_data(train_frames, valid_frames, test_frames)

        # ---- model, optimizer, schedule, EMA (seeded: every process builds the same initial model)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        e0_given = e0_by_number(cfg.e0)
        if self.cg is not None and e0_given is None:  # mapped frames have no energy; a free energy's zero is free
            e0_given = {z: 0.0 for z in self.species}
        e0, scale, shift = dataset_statistics(self.train_samples, self.species, e0_given, cfg.scale)
        check_model_size(cfg.model_name, self.species, cfg.cutoff, cfg.model_hparams)
        try:
            model = build_model(cfg.model_name, self.species, cfg.cutoff, hparams=cfg.model_hparams)
        except RuntimeError as err:  # what the size check could not count (tp) may not fit
            if "allocate" not in str(err):
                raise
            raise ValueError(f"hparams {cfg.model_hparams}: the {cfg.model_name} model does not fit in memory "
                             f"({str(err).splitlines()[0][:200]})") from None
        with torch.no_grad():
            model.E0.copy_(torch.as_tensor(e0))
            model.scale.fill_(scale)
            model.shift.fill_(shift)
        model.domain = shortest_distances(s.graph for s in self.train_samples)  # copied into the EMA
        if self.cg is not None:  # the network on beads plus the priors fitted to the training beads
            model = self.cg.attach(model)
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
        kind = cfg.schedule_kind  # "auto" continues the schedule the run started with
        if resume is not None and cfg.scheduler == "auto":
            kind = state_kind(resume["scheduler"])
        self.scheduler = EpochScheduler(self.optimizer, kind, cfg.effective_lr, cfg.epoch_limit,
                                        cfg.effective_warmup_epochs, cfg.min_lr, cfg.lr_factor, cfg.lr_patience,
                                        max_time=cfg.max_time, final_fraction=cfg.final_fraction,
                                        final_lr=cfg.final_lr)
        self.ema = make_ema(self.model, cfg.ema_decay)
        self.loop = EpochLoop(self.run_dir, self.model, self.optimizer, self.scheduler, self.ema,
                              max_epochs=cfg.epoch_limit, patience=cfg.early_stopping_patience,
                              max_time=cfg.max_time,
                              log=self._say, is_main=self.dist.is_main, agree=self._agree)
        self.resumed = resume is not None
        if resume is not None:
            self.loop.load_state_dict(resume)
        self.in_final_stage = False
        if resume is not None and resume.get("final_stage"):
            self._enter_final_stage(resumed=True)
        self.stop_reason = ""
        self.ddp_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    def _setup_data(self, train_frames, valid_frames, test_frames) -> None:
        """Samples (graphs with neighbour lists) and the species; data errors are ValueErrors."""
        cfg = self.cfg
        self.cg = None  # coarse-grained training (cfg.cg_map): the map, beads, priors' data
        if train_frames is None:
            if cfg.cg_map:
                from ..cg.training import load_cg_frames
                train_frames, read_valid, read_test, self.cg = load_cg_frames(cfg)
            else:
                train_frames, read_valid, read_test = load_frames(cfg)
            valid_frames = read_valid if valid_frames is None else valid_frames
            test_frames = read_test if test_frames is None else test_frames
        elif cfg.cg_map:
            from ..cg.training import prepare_cg_training
            train_frames, valid_frames, test_frames, self.cg = prepare_cg_training(
                cfg, train_frames, valid_frames or [], test_frames)
        self.train_samples = build_samples(list(train_frames), cfg.cutoff)
        if not self.train_samples:
            raise ValueError(f"no training frames in {cfg.data} (index {cfg.index!r})")
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

    # ------------------------------------------------------------------ the loop's state
    @property
    def epoch(self) -> int:
        return self.loop.epoch

    @property
    def history(self) -> List[Dict[str, float]]:
        return self.loop.history

    def path(self, name: str) -> str:
        return self.run_dir.path(name)

    # ------------------------------------------------------------------ helpers
    def _say(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (keeps the processes in step)."""
        if not self.dist.enabled:
            return bool(flag)
        t = ddp.all_reduce_sum(torch.tensor([float(flag)]), self.dist, self.device)
        return bool(t.item() > 0)

    def _counts(self, indices: np.ndarray) -> GlobalCounts:
        return GlobalCounts(int(self._has_energy[indices].sum()), int(self._force_atoms[indices].sum()),
                            int(self._has_stress[indices].sum()))

    def _valid_model(self) -> torch.nn.Module:
        m = self.ema.module
        return m if self.valid_dtype == self.dtype else copy.deepcopy(m).to(self.valid_dtype)

    # ------------------------------------------------------------------ EpochTask
    def train_epoch(self, loop: EpochLoop) -> Tuple[Dict[str, float], bool]:
        """One epoch of optimizer steps: ({"train_loss": mean global loss}, stopped early for time)."""
        cfg = self.cfg
        if not self.in_final_stage and self.scheduler.final_stage(loop.epoch):
            self._enter_final_stage()
        batches = EpochBatches(len(self.train_samples), cfg.effective_batch_size, True, cfg.seed,
                               self.dist.rank, self.dist.world_size)
        batches.set_epoch(loop.epoch)
        global_batches = batches.global_batches()
        loader = make_loader(self.train_samples, batches, cfg.num_workers)
        self.ddp_model.train()
        total = torch.zeros((), dtype=torch.float64)
        steps = 0
        out_of_time = False
        of = f"/{cfg.epoch_limit}" if cfg.epoch_limit else ""
        bar = tqdm(loader, total=len(global_batches), desc=f"epoch {loop.epoch + 1}{of}",
                   disable=not (cfg.progress and self.dist.is_main), leave=False, dynamic_ncols=True,
                   file=sys.stderr)
        for batch, indices in zip(bar, global_batches):
            batch = batch.to(self.device)
            counts = self._counts(indices)
            stress = self.train_stress and counts.stress > 0 and bool(batch.stress_mask.any())
            out = self.ddp_model(batch.graph, forces=self.train_forces, stress=stress,
                                 create_graph=self.train_forces or stress, layout=cfg.layout)
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
            if cfg.max_time is not None and loop.time_is_up():
                out_of_time = True
                break
        bar.close()
        total = ddp.all_reduce_sum(total, self.dist, self.device)
        return {"train_loss": float(total) / max(steps, 1)}, out_of_time

    def validate(self, loop: EpochLoop, train: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
        """Validation loss and errors of the EMA weights (the training loss without validation data)."""
        if self.valid_samples:
            sums = self.evaluate(self.valid_samples)
            valid_loss, metrics = sums.loss(self.weights), sums.metrics()
        else:
            valid_loss, metrics = train["train_loss"], {k: math.nan for k in ErrorSums().metrics()}
        return valid_loss, {"valid_loss": valid_loss, **metrics}

    def save_best(self, loop: EpochLoop, row: Dict[str, float]) -> None:
        metrics = {k: v for k, v in row.items() if k.endswith(("_mae", "_rmse"))}
        metadata = {"trained_by": "eqgnn-train", "epoch": loop.epoch, "data": self.cfg.data,
                    "valid_metrics": _nan_to_none(metrics),
                    "units": {"energy_mae": "meV/atom", "forces_mae": "meV/Å", "stress_mae": "meV/Å^3"}}
        save_model(self.ema.module, self.path("best.pt"), metadata=metadata)

    def extra_state(self) -> Dict[str, Any]:
        return {"model_config": self.model.config, "final_stage": self.in_final_stage}

    def _enter_final_stage(self, resumed: bool = False) -> None:
        """The final stage (config final_fraction): the energy weight raised; on entering it the best
        validation loss is forgotten, since the loss changed meaning (best.pt: the stage's best)."""
        cfg = self.cfg
        self.in_final_stage = True
        self.weights = LossWeights(cfg.final_energy_weight, cfg.forces_weight, cfg.stress_weight,
                                   cfg.loss, cfg.huber_delta)
        if not resumed:
            self.loop.best_loss, self.loop.bad_epochs = math.inf, 0
            self._say(f"final stage from epoch {self.loop.epoch + 1}: energy weight "
                      f"{cfg.final_energy_weight:g}, lr {cfg.final_lr:g}")

    def log_columns(self, history: List[Dict[str, float]]) -> List[str]:
        has_stress = any(not math.isnan(r.get("stress_mae", math.nan)) for r in history)
        return list(LOG_COLUMNS) + (["stress_mae", "stress_rmse"] if has_stress else [])

    def epoch_line(self, row: Dict[str, float], improved: bool) -> str:
        parts = [f"epoch {int(row['epoch']):4d}", f"t {row['time']:7.1f}s", f"lr {row['lr']:.2e}",
                 f"train {row['train_loss']:.4g}", f"valid {row['valid_loss']:.4g}"]
        for key, label in (("energy_mae", "E {:.3g} meV/atom"), ("forces_mae", "F {:.3g} meV/Å"),
                           ("stress_mae", "S {:.3g} meV/Å³")):
            if not math.isnan(row.get(key, math.nan)):
                parts.append(label.format(row[key]))
        return "  ".join(parts) + ("  *" if improved else "")

    # ------------------------------------------------------------------ evaluation and the run
    def evaluate(self, samples: Sequence[Sample], predictions: Optional[Predictions] = None,
                 model: Optional[torch.nn.Module] = None) -> ErrorSums:
        """Error sums of the EMA model (or ``model``) on ``samples``, combined over processes."""
        model = model if model is not None else self._valid_model()
        if predictions is not None:  # gathered on this process alone
            return evaluate(model, samples, self.cfg.eval_batch_size, self.weights, self.device,
                            predictions=predictions, layout=self.cfg.layout)
        return evaluate(model, samples, self.cfg.eval_batch_size, self.weights, self.device,
                        self.dist.rank, self.dist.world_size,
                        reduce=lambda t: ddp.all_reduce_sum(t, self.dist, self.device),
                        layout=self.cfg.layout)

    def fit(self) -> TrainResult:
        """Train until max_epochs, early stopping or max_time; write the run directory; return results."""
        cfg, loop = self.cfg, self.loop
        if self.resumed:
            self._say(f"resuming {self.path('last.pt')} after epoch {loop.epoch} "
                      f"(best valid loss {loop.best_loss:.4g} at epoch {loop.best_epoch + 1})")
        else:
            if self.cg is not None:
                self._say(self.cg.describe())
            self._say(f"training {cfg.model_name} on {len(self.train_samples)} frames "
                      f"({len(self.valid_samples)} validation), species {self.species}, "
                      f"{sum(p.numel() for p in self.model.parameters())} parameters, device {self.device}"
                      f"{f', {self.dist.world_size} processes' if self.dist.enabled else ''}")
        self.stop_reason = loop.run(self)
        return self._finish()

    def _finish(self) -> TrainResult:
        from ..checkpoint import load_model
        from .plots import plot_learning_curve, plot_parities

        loop = self.loop
        best_row = loop.history[loop.best_epoch] if 0 <= loop.best_epoch < len(loop.history) else {}
        best_metrics = {k: v for k, v in best_row.items() if k.endswith(("_mae", "_rmse"))}
        test_metrics = None
        if self.dist.is_main and loop.history:
            self._say(f"stopped ({self.stop_reason}) after epoch {loop.epoch}; best epoch "
                      f"{loop.best_epoch + 1}, valid loss {loop.best_loss:.4g}")
            plot_learning_curve(self.path("log.csv"), self.path("learning_curve.png"))
            if not os.path.exists(self.path("best.pt")):  # every validation loss was NaN
                self._say("no epoch gave a finite validation loss: no best.pt, no parity plots")
                return self._result(best_metrics, None)
            best = load_model(self.path("best.pt"), map_location=self.device).to(self.valid_dtype)
            parity_set = self.valid_samples or self.train_samples
            preds = Predictions()
            self.evaluate(parity_set, predictions=preds, model=best)
            plot_parities(preds.arrays(), self.path("parity_valid.png"),
                          title="validation set" if self.valid_samples else "training set")
            if self.test_samples:
                preds = Predictions()
                test_metrics = self.evaluate(self.test_samples, predictions=preds, model=best).metrics()
                plot_parities(preds.arrays(), self.path("parity_test.png"), title="test set")
                self._say("test: " + ", ".join(f"{k} {v:.4g}" for k, v in test_metrics.items()
                                               if not math.isnan(v)))
            summary = {"stop_reason": self.stop_reason, "epochs": loop.epoch,
                       "best_epoch": loop.best_epoch + 1, "best_valid_loss": loop.best_loss,
                       "valid": _nan_to_none(best_metrics),
                       "test": None if test_metrics is None else _nan_to_none(test_metrics),
                       "wall_time_s": loop.elapsed, "device": str(self.device),
                       "world_size": self.dist.world_size}
            self.run_dir.write_text("metrics.json", json.dumps(summary, indent=1))
        return self._result(best_metrics, test_metrics)

    def _result(self, best_metrics: Dict[str, float], test_metrics: Optional[Dict[str, float]]
                ) -> TrainResult:
        ddp.barrier(self.dist)
        loop = self.loop
        return TrainResult(self.out, loop.epoch, loop.best_epoch + 1, loop.best_loss, best_metrics,
                           test_metrics, self.stop_reason, list(loop.history))

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
