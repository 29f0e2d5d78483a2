"""Exponential moving average of the weights, via ``torch.optim.swa_utils.AveragedModel``.

After the ``n``-th optimizer step (n = 0, 1, ...) ``W_ema <- d_n W_ema + (1 - d_n) W`` with the
warmed-up decay ``d_n = min(decay, (1 + n) / (10 + n))``: the first update copies W, and early
averages do not drag along the random initial weights. Buffers (E0, scale, shift, species table) are
kept equal to the live model's, not averaged. The EMA weights are validated, early-stopped on and
saved in ``best.pt``; ``decay = 0`` makes the "average" a copy of the current weights.
"""

from __future__ import annotations

from typing import Callable, List

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema", "warmed_up_ema"]


def warmed_up_ema(decay: float) -> Callable[[List[torch.Tensor], List[torch.Tensor], torch.Tensor], None]:
    """A ``multi_avg_fn`` for :class:`AveragedModel` with decay ``min(decay, (1 + n) / (10 + n))``."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")

    @torch.no_grad()
    def update(ema_params: List[torch.Tensor], params: List[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for p_ema, p in zip(ema_params, params):
            if p_ema.is_floating_point():
                p_ema.lerp_(p, 1.0 - d)
            else:
                p_ema.copy_(p)

    return update


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An :class:`AveragedModel` tracking ``model`` (the bare module, not a DDP wrapper).

    Call ``ema.update_parameters(model)`` after each step; ``ema.module`` is the averaged
    :class:`~ase_eqgnn.models.potential.Potential`.
    """
    return AveragedModel(model, multi_avg_fn=warmed_up_ema(decay), use_buffers=False)
