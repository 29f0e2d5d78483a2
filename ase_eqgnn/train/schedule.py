"""Per-epoch learning-rate schedules with linear warm-up, built from torch's schedulers.

- ``"cosine"``: one :class:`~torch.optim.lr_scheduler.LambdaLR` with factor
  ``(e + 1) / W`` for the first ``W`` warm-up epochs, then
  ``r + (1 - r) (1 + cos(π p)) / 2`` down to ``r = min_lr / lr``, where the progress
  ``p = max((e - W) / (T - W), (t - t_W) / (t_max - t_W))`` is the larger of the epoch fraction
  (``T = max_epochs``) and, when a wall-time budget ``t_max`` (``max_time``) is set, the fraction of
  the budget left after warm-up (``t_W``: training seconds when warm-up ended) used so far: a run cut
  by its time budget still ends annealed instead of stopping at a high learning rate. With a budget,
  ``max_epochs`` may be None: the budget alone sets the pace. With a final stage (``final_fraction``
  f > 0, MACE's SWA-like stage two) the cosine runs over ``p / (1 - f)`` and the last fraction f of
  the run keeps the constant learning rate ``final_lr`` (:meth:`EpochScheduler.final_stage` says
  when; the trainer raises the energy weight there).
- ``"plateau"``: the same linear warm-up (LambdaLR), then
  :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on the validation loss.

The learning rate used in epoch ``e`` depends only on ``e``, the validation losses and the elapsed
training time so far; the state (``state_dict``) holds all of it so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

__all__ = ["EpochScheduler", "state_kind"]


class EpochScheduler:
    """Call :meth:`step` once at the end of every epoch with that epoch's index and validation loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float,
                 max_epochs: Optional[int],
                 warmup_epochs: int = 0, min_lr: float = 1e-6, factor: float = 0.5, patience: int = 5,
                 max_time: Optional[float] = None, final_fraction: float = 0.0,
                 final_lr: Optional[float] = None):
        if kind not in ("plateau", "cosine"):
            raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {kind!r}")
        if max_epochs is None and kind == "cosine" and not max_time:
            raise ValueError("the cosine schedule needs max_epochs or max_time to anneal over")
        self.kind = kind
        self.max_time = float(max_time) if max_time else None
        self.time_progress = 0.0  # fraction of the budget after warm-up used by the last epoch's end
        self.warmup_seconds = 0.0  # training seconds when the warm-up ended
        self.warmup_epochs = int(warmup_epochs)
        w, t = self.warmup_epochs, None if max_epochs is None else int(max_epochs)
        floor = min(1.0, min_lr / lr)
        self.final_fraction = float(final_fraction)
        if self.final_fraction and kind != "cosine":
            raise ValueError("a final stage (final_fraction > 0) needs the cosine schedule")
        final = (final_lr if final_lr is not None else min_lr) / lr

        def progress(e: int) -> float:  # of the whole run, before epoch e (after warm-up)
            return min(1.0, max(0.0 if t is None else (e - w) / max(1, t - w), self.time_progress))

        self.progress = progress

        def warm(e: int) -> float:
            return 1.0 if w == 0 or e >= w else (e + 1) / w

        def cosine(e: int) -> float:
            if e < w:
                return (e + 1) / w
            if self.final_stage(e):
                return final
            p = progress(e) / (1.0 - self.final_fraction)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

        self.lambda_lr = LambdaLR(optimizer, cosine if kind == "cosine" else warm)
        self.plateau = (ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                          min_lr=min_lr) if kind == "plateau" else None)

    def step(self, epoch: int, valid_loss: float, elapsed: Optional[float] = None) -> None:
        """End of epoch ``epoch`` (0-based), ``elapsed`` training seconds so far: set the learning
        rate of epoch ``epoch + 1``."""
        if elapsed is not None and epoch + 1 == self.warmup_epochs:
            self.warmup_seconds = float(elapsed)
        if self.max_time and elapsed is not None and epoch + 1 > self.warmup_epochs:
            self.time_progress = self._time_progress(elapsed)
        if self.plateau is None or epoch + 1 <= self.warmup_epochs:
            self.lambda_lr.step()
        else:
            self.plateau.step(valid_loss)

    def final_stage(self, epoch: int) -> bool:
        """Epoch ``epoch`` (0-based, after the warm-up) belongs to the final stage."""
        return (self.final_fraction > 0 and epoch >= self.warmup_epochs
                and self.progress(epoch) >= 1.0 - self.final_fraction)

    def _time_progress(self, elapsed: float) -> float:
        left = self.max_time - self.warmup_seconds
        return 1.0 if left <= 0 else min(1.0, max(0.0, (elapsed - self.warmup_seconds) / left))

    def state_dict(self) -> Dict[str, Any]:
        state = {"kind": self.kind, "lambda_lr": self.lambda_lr.state_dict(),
                 "time_progress": self.time_progress, "warmup_seconds": self.warmup_seconds,
                 "max_time": self.max_time}
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any], elapsed: Optional[float] = None) -> None:
        """Continue a schedule; call after the optimizer's ``load_state_dict``.

        Where the learning rate is a function of the epoch (cosine, warm-up) it is recomputed with
        this scheduler's settings, so a run resumed with a larger ``max_epochs`` follows the new
        schedule from its first epoch, exactly as a run started with it would; given the training
        seconds so far (``elapsed``), the same holds for a new ``max_time``. The plateau schedule's
        reductions are history, kept as the optimizer stored them.
        """
        if state_kind(state) != self.kind:
            raise ValueError(f"the run was trained with the {state_kind(state)} learning-rate schedule; "
                             f"set scheduler: {state_kind(state)} to continue it, or start a new run")
        self.lambda_lr.load_state_dict(state["lambda_lr"])
        self.time_progress = float(state.get("time_progress", 0.0))
        self.warmup_seconds = float(state.get("warmup_seconds", 0.0))
        past_warmup = self.lambda_lr.last_epoch >= self.warmup_epochs
        if elapsed is not None and state.get("max_time", self.max_time) != self.max_time:
            self.time_progress = (self._time_progress(elapsed) if self.max_time and past_warmup
                                  else 0.0)
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        epoch = self.lambda_lr.last_epoch
        if self.plateau is None or epoch < self.warmup_epochs:
            for group, base, factor in zip(self.lambda_lr.optimizer.param_groups, self.lambda_lr.base_lrs,
                                           self.lambda_lr.lr_lambdas):
                group["lr"] = base * factor(epoch)


def state_kind(state: Dict[str, Any]) -> str:
    """The schedule ("cosine" or "plateau") a :meth:`EpochScheduler.state_dict` was saved from."""
    return state.get("kind") or ("plateau" if "plateau" in state else "cosine")
