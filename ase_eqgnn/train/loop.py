"""The epoch loop both trainers share: time budget, EMA, learning-rate schedule, early stopping, files.

One epoch of :meth:`EpochLoop.run`:

1. the task trains (:meth:`EpochTask.train_epoch`): optimizer steps, ``ema.update_parameters(model)``
   after each, and :meth:`EpochLoop.time_is_up` after each so a wall-time budget can end the epoch;
2. the task validates the EMA weights (:meth:`EpochTask.validate`) and returns the validation loss;
3. the loop steps the schedule (:class:`~.schedule.EpochScheduler`) on that loss, counts epochs
   without improvement, appends the row ``{epoch, time, lr, <train columns>, <valid columns>}`` to
   the history, has the task save ``best.pt`` when the loss improved, then writes ``last.pt`` (model,
   optimizer, schedule, EMA, counters, history, random states and the task's extra state) and
   ``log.csv`` atomically (:class:`~.run_dir.RunDirectory`).

It stops at ``max_epochs``; after ``patience`` epochs without improvement (0 or None: never); or when
the wall time so far (summed over resumes) plus the last epoch's duration would exceed ``max_time``
seconds. Since everything the next epoch depends on is in ``last.pt``, a run killed at any moment and
started again continues as if it had not been stopped.

Example (a task that fits ``y = 2 x`` with one weight)::

    class Fit:
        def train_epoch(self, loop):
            loss = ((w * x - 2 * x) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
            ema.update_parameters(model)
            return {"train_loss": float(loss)}, loop.time_is_up()
        def validate(self, loop, train): return train["train_loss"], {}
        def save_best(self, loop, row): pass
        def extra_state(self): return {}
        def epoch_line(self, row, improved): return f"epoch {row['epoch']}"

    EpochLoop(run_dir, model, opt, scheduler, ema, max_epochs=10).run(Fit())
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .resume import rng_state, set_rng_state
from .run_dir import RunDirectory
from .schedule import EpochScheduler

__all__ = ["EpochLoop", "EpochTask"]


def _plain(value: Any) -> Any:
    """A Python number for a NumPy scalar or a 0-d tensor (last.pt must load with weights_only)."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return value.item()
    return value


class EpochTask:
    """What a trainer supplies to :class:`EpochLoop` (a protocol: subclassing is optional)."""

    def train_epoch(self, loop: "EpochLoop") -> Tuple[Dict[str, float], bool]:
        """Train one epoch: (columns for the log, such as ``train_loss``; stopped for time)."""
        raise NotImplementedError

    def validate(self, loop: "EpochLoop", train: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
        """(validation loss of the EMA weights, columns for the log)."""
        raise NotImplementedError

    def save_best(self, loop: "EpochLoop", row: Dict[str, float]) -> None:
        """Write ``best.pt`` from ``loop.ema.module`` (called on the main process only)."""
        raise NotImplementedError

    def extra_state(self) -> Dict[str, Any]:
        """Task state saved in ``last.pt`` besides the loop's (tensors and plain values only)."""
        return {}

    def log_columns(self, history: List[Dict[str, float]]) -> Optional[List[str]]:
        """Columns of ``log.csv``; None: every key in order of appearance."""
        return None

    def epoch_line(self, row: Dict[str, float], improved: bool) -> str:
        return f"epoch {int(row['epoch'])}" + ("  *" if improved else "")


class EpochLoop:
    """Epoch counters, stopping rules and checkpoints for ``model`` trained by an :class:`EpochTask`.

    Parameters
    ----------
    run : the run folder (config, last.pt, log.csv).
    model, optimizer, scheduler, ema : the live model (not a DDP wrapper), its optimizer, the
        :class:`EpochScheduler` and the ``AveragedModel`` of :func:`~.ema.make_ema`.
    max_epochs, patience, max_time : the stopping rules (see the module docstring); seconds.
    log : where the per-epoch lines go (main process only).
    is_main : this process writes the files (False on the other ranks of a DDP run).
    agree : makes a stop decision common to every process (DDP: true anywhere -> true everywhere).
    """

    def __init__(self, run: RunDirectory, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: EpochScheduler, ema: torch.nn.Module, *, max_epochs: int,
                 patience: Optional[int] = None, max_time: Optional[float] = None,
                 log: Callable[[str], None] = print, is_main: bool = True,
                 agree: Callable[[bool], bool] = bool):
        self.run_dir = run
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.max_epochs, self.patience, self.max_time = int(max_epochs), patience, max_time
        self.log, self.is_main, self.agree = log, is_main, agree
        self.epoch = 0  # epochs done
        self.best_loss = math.inf
        self.best_epoch = -1  # 0-based index of the best epoch
        self.bad_epochs = 0
        self.elapsed = 0.0  # training seconds counted so far, over all resumes
        self.history: List[Dict[str, float]] = []
        self._start = time.perf_counter()  # start of the time not yet counted in elapsed

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict(),
                "epoch": self.epoch, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "elapsed": self.elapsed, "history": self.history,
                "rng": rng_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a ``last.pt`` state (restores the random generators last)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.elapsed = float(state["elapsed"])
        self.scheduler.load_state_dict(state["scheduler"], elapsed=self.elapsed)
        self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = [dict(r) for r in state["history"]]
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ time and stopping
    def seconds(self) -> float:
        """Training seconds so far, this process's current stretch included."""
        return self.elapsed + (time.perf_counter() - self._start)

    def time_is_up(self) -> bool:
        """The wall-time budget is spent (the same answer on every process)."""
        return self.max_time is not None and self.agree(self.seconds() >= self.max_time)

    def stop_reason(self) -> str:
        """Why to stop before the next epoch ("max_epochs", "early_stopping", "max_time"), or ""."""
        if self.epoch >= self.max_epochs:
            return "max_epochs"
        if self.patience and self.bad_epochs >= self.patience:
            return "early_stopping"
        if self.max_time is not None:
            times = [r["time"] for r in self.history[-2:]]
            last = times[-1] - (times[-2] if len(times) > 1 else 0.0) if times else 0.0
            if self.agree(self.seconds() + last > self.max_time):
                return "max_time"
        return ""

    # ------------------------------------------------------------------ the loop
    def run(self, task: EpochTask) -> str:
        """Train epochs until a stopping rule holds; returns the reason."""
        if self.is_main:
            self.run_dir.prepare()
            self.run_dir.write_config()
        self._start = time.perf_counter()
        while not (reason := self.stop_reason()):
            lr = self.optimizer.param_groups[0]["lr"]
            train, out_of_time = task.train_epoch(self)
            valid_loss, valid = task.validate(self, train)
            self.scheduler.step(self.epoch, valid_loss, self.seconds())
            improved = valid_loss < self.best_loss
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = valid_loss, self.epoch, 0
            else:
                self.bad_epochs += 1
            now = time.perf_counter()
            self.elapsed += now - self._start
            self._start = now
            row = {"epoch": self.epoch + 1, "time": self.elapsed, "lr": lr,
                   **{k: _plain(v) for k, v in {**train, **valid}.items()}}
            self.history.append(row)
            self.epoch += 1
            if self.is_main:
                if improved:
                    task.save_best(self, row)
                self.run_dir.save_state({**self.state_dict(), **task.extra_state()})
                self.run_dir.write_log(self.history, task.log_columns(self.history))
                self.log(task.epoch_line(row, improved))
            if out_of_time:
                reason = "max_time"
                break
        return reason
