"""Per-epoch learning-rate schedules with linear warm-up, built from torch's schedulers.

- ``"cosine"``: one :class:`~torch.optim.lr_scheduler.LambdaLR` with factor
  ``(e + 1) / W`` for the first ``W`` warm-up epochs, then
  ``r + (1 - r) (1 + cos(π p)) / 2`` down to ``r = min_lr / lr``, where the progress
  ``p = max((e - W) / (T - W), t / t_max)`` is the larger of the epoch fraction (``T = max_epochs``)
  and, when a wall-time budget ``t_max`` (``max_time``) is set, the fraction of it used: a run cut by
  its time budget still ends annealed instead of stopping at a high learning rate.
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

__all__ = ["EpochScheduler"]


class EpochScheduler:
    """Call :meth:`step` once at the end of every epoch with that epoch's index and validation loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float, max_epochs: int,
                 warmup_epochs: int = 0, min_lr: float = 1e-6, factor: float = 0.5, patience: int = 5,
                 max_time: Optional[float] = None):
        if kind not in ("plateau", "cosine"):
            raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {kind!r}")
        self.kind = kind
        self.max_time = float(max_time) if max_time else None
        self.time_progress = 0.0  # fraction of max_time used by the end of the last epoch
        self.warmup_epochs = int(warmup_epochs)
        w, t = self.warmup_epochs, int(max_epochs)
        floor = min(1.0, min_lr / lr)

        def warm(e: int) -> float:
            return 1.0 if w == 0 or e >= w else (e + 1) / w

        def cosine(e: int) -> float:
            if e < w:
                return (e + 1) / w
            p = min(1.0, max((e - w) / max(1, t - w), self.time_progress))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

        self.lambda_lr = LambdaLR(optimizer, cosine if kind == "cosine" else warm)
        self.plateau = (ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                          min_lr=min_lr) if kind == "plateau" else None)

    def step(self, epoch: int, valid_loss: float, elapsed: Optional[float] = None) -> None:
        """End of epoch ``epoch`` (0-based), ``elapsed`` training seconds so far: set the learning
        rate of epoch ``epoch + 1``."""
        if self.max_time and elapsed is not None:
            self.time_progress = min(1.0, elapsed / self.max_time)
        if self.plateau is None or epoch + 1 <= self.warmup_epochs:
            self.lambda_lr.step()
        else:
            self.plateau.step(valid_loss)

    def state_dict(self) -> Dict[str, Any]:
        state = {"lambda_lr": self.lambda_lr.state_dict(), "time_progress": self.time_progress,
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
        self.lambda_lr.load_state_dict(state["lambda_lr"])
        self.time_progress = float(state.get("time_progress", 0.0))
        if elapsed is not None and state.get("max_time", self.max_time) != self.max_time:
            self.time_progress = min(1.0, elapsed / self.max_time) if self.max_time else 0.0
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        epoch = self.lambda_lr.last_epoch
        if self.plateau is None or epoch < self.warmup_epochs:
            for group, base, factor in zip(self.lambda_lr.optimizer.param_groups, self.lambda_lr.base_lrs,
                                           self.lambda_lr.lr_lambdas):
                group["lr"] = base * factor(epoch)
