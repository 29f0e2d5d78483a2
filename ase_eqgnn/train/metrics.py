"""Error metrics of a potential on a set of samples: MAE / RMSE of energy, forces and stress.

Conventions (those of the MD17 / MACE / NequIP literature):

- energy: per atom, ``|E - Ê| / n`` averaged over frames, reported in **meV/atom**;
- forces: every Cartesian component of every atom, reported in **meV/Å**;
- stress: every component of the 3x3 tensor of frames that have one, reported in **meV/Å^3**.

:class:`ErrorSums` holds plain sums so that shares from several processes add up exactly
(one ``all_reduce`` of a small vector); :meth:`ErrorSums.metrics` turns them into the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import keys
from .data import Batch, Sample, collate
from .losses import LossWeights, elementwise

__all__ = ["ErrorSums", "evaluate", "Predictions"]

_FIELDS = ("e_abs", "e_sq", "e_loss", "n_e", "f_abs", "f_sq", "f_loss", "n_f", "s_abs", "s_sq",
           "s_loss", "n_s")


@dataclass
class ErrorSums:
    """Sums of absolute / squared / loss errors and their counts (eV units)."""

    values: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_FIELDS), dtype=torch.float64))

    def __getitem__(self, name: str) -> float:
        return float(self.values[_FIELDS.index(name)])

    def add(self, out: Dict[str, torch.Tensor], batch: Batch, weights: LossWeights) -> None:
        """Accumulate one batch (model output on the same device as ``batch``)."""
        v = torch.zeros(len(_FIELDS), dtype=torch.float64)
        m = batch.energy_mask
        if bool(m.any()):
            d = ((out[keys.ENERGY].detach()[m].double() - batch.energy[m]) / batch.n_atoms[m]).cpu()
            v[0:4] = torch.stack([d.abs().sum(), (d * d).sum(),
                                  elementwise(d, weights.kind, weights.delta).sum(),
                                  torch.tensor(float(d.numel()), dtype=torch.float64)])
        m = batch.forces_mask
        if keys.FORCES in out and bool(m.any()):
            d = (out[keys.FORCES].detach()[m].double() - batch.forces[m]).cpu()
            v[4:8] = torch.stack([d.abs().sum(), (d * d).sum(),
                                  elementwise(d, weights.kind, weights.delta).sum(),
                                  torch.tensor(float(d.numel()), dtype=torch.float64)])
        m = batch.stress_mask
        if keys.STRESS in out and bool(m.any()):
            d = (out[keys.STRESS].detach()[m].double() - batch.stress[m]).cpu()
            v[8:12] = torch.stack([d.abs().sum(), (d * d).sum(),
                                   elementwise(d, weights.kind, weights.delta).sum(),
                                   torch.tensor(float(d.numel()), dtype=torch.float64)])
        self.values += v * batch.weight

    def loss(self, weights: LossWeights) -> float:
        """The training loss over the whole set (see :mod:`.losses`), eV-based units."""
        total = 0.0
        for w, key, n in ((weights.energy, "e_loss", "n_e"), (weights.forces, "f_loss", "n_f"),
                          (weights.stress, "s_loss", "n_s")):
            if w > 0 and self[n] > 0:
                total += w * self[key] / self[n]
        return total

    def metrics(self) -> Dict[str, float]:
        """MAE / RMSE in meV/atom (energy), meV/Å (forces), meV/Å^3 (stress); NaN where no data."""
        out: Dict[str, float] = {}
        for name, p in (("energy", "e"), ("forces", "f"), ("stress", "s")):
            n = self[f"n_{p}"]
            out[f"{name}_mae"] = 1e3 * self[f"{p}_abs"] / n if n > 0 else math.nan
            out[f"{name}_rmse"] = 1e3 * math.sqrt(self[f"{p}_sq"] / n) if n > 0 else math.nan
        return out


@dataclass
class Predictions:
    """Reference and predicted values for parity plots: per-atom energies (eV/atom), force components (eV/Å)."""

    energy_ref: List[np.ndarray] = field(default_factory=list)
    energy_pred: List[np.ndarray] = field(default_factory=list)
    forces_ref: List[np.ndarray] = field(default_factory=list)
    forces_pred: List[np.ndarray] = field(default_factory=list)

    def add(self, out: Dict[str, torch.Tensor], batch: Batch) -> None:
        m = batch.energy_mask
        self.energy_ref.append((batch.energy[m] / batch.n_atoms[m]).numpy())
        self.energy_pred.append((out[keys.ENERGY].detach()[m].double().cpu() / batch.n_atoms[m]).numpy())
        if keys.FORCES in out:
            m = batch.forces_mask
            self.forces_ref.append(batch.forces[m].numpy().ravel())
            self.forces_pred.append(out[keys.FORCES].detach()[m].double().cpu().numpy().ravel())

    def arrays(self) -> Dict[str, np.ndarray]:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return {"energy_ref": cat(self.energy_ref), "energy_pred": cat(self.energy_pred),
                "forces_ref": cat(self.forces_ref), "forces_pred": cat(self.forces_pred)}


def evaluate(model: torch.nn.Module, samples: Sequence[Sample], batch_size: int,
             weights: Optional[LossWeights] = None, device="cpu", rank: int = 0, world_size: int = 1,
             predictions: Optional[Predictions] = None,
             reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
             layout: str = "auto") -> ErrorSums:
    """Errors of ``model`` (a Potential, evaluated as is: its dtype and device) on ``samples``.

    Samples are taken in file order in batches of ``batch_size``; process ``rank`` of ``world_size``
    handles every ``world_size``-th batch and ``reduce`` (e.g. an all-reduce sum) combines the sums.
    Forces are always evaluated; stress only when some sample has one. ``layout``: the model's
    neighbour layout ("auto" or "reference", see :meth:`Potential.forward`).
    """
    weights = weights or LossWeights()
    sums = ErrorSums()
    want_stress = any(s.stress is not None for s in samples)
    chunks = [list(range(k, min(k + batch_size, len(samples)))) for k in range(0, len(samples), batch_size)]
    was_training = model.training
    model.eval()
    try:
        for idx in chunks[rank::world_size]:
            batch = collate([samples[i] for i in idx])
            stress = want_stress and bool(batch.stress_mask.any())
            out = model(batch.graph.to(device), forces=True, stress=stress, create_graph=False,
                        layout=layout)
            out = {k: v.detach().cpu() for k, v in out.items()}
            sums.add(out, batch, weights)
            if predictions is not None:
                predictions.add(out, batch)
    finally:
        model.train(was_training)
    if reduce is not None:
        sums.values = reduce(sums.values)
    return sums
