"""The training loss: weighted MSE (or Huber) of per-atom energy, forces and stress.

For a *global* batch (all processes together) with ``B_E`` labelled energies, ``N_F`` atoms with
forces and ``B_S`` structures with stress:

    L = w_E * Σ_b ρ((E_b - Ê_b) / n_b) / B_E                   (eV/atom)^2
      + w_F * Σ_i Σ_k ρ(F_ik - F̂_ik) / (3 N_F)                   (eV/Å)^2
      + w_S * Σ_b Σ_kl ρ(σ_bkl - σ̂_bkl) / (9 B_S)               (eV/Å^3)^2

with ρ(x) = x² (``"mse"``) or the Huber function with transition ``delta`` (``"huber"``, ρ = x² for
|x| ≤ δ, so both agree on small errors). Each process sums over its own share and divides by the
*global* counts, so the sum over processes is exactly L (DDP then averages gradients, hence the
factor ``world_size`` applied by the trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from .. import keys
from .data import Batch

__all__ = ["LossWeights", "GlobalCounts", "elementwise", "loss_terms"]


@dataclass(frozen=True)
class LossWeights:
    energy: float = 1.0
    forces: float = 100.0
    stress: float = 1.0
    kind: str = "mse"
    delta: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in ("mse", "huber"):
            raise ValueError(f"loss must be 'mse' or 'huber', got {self.kind!r}")


@dataclass(frozen=True)
class GlobalCounts:
    """Numbers of labelled energies, force atoms and stresses in the global batch (denominators)."""

    energy: int
    forces: int
    stress: int


def elementwise(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """ρ(diff) elementwise: ``diff**2`` or ``2 * delta * huber(diff)`` (equal to diff**2 near 0)."""
    if kind == "mse":
        return diff * diff
    return 2.0 * torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)


def loss_terms(out: Dict[str, torch.Tensor], batch: Batch, weights: LossWeights,
               counts: GlobalCounts) -> Dict[str, torch.Tensor]:
    """Per-term losses of this process's share (see the module docstring), and their weighted sum.

    ``out`` is the model output (``keys.ENERGY`` [B], ``keys.FORCES`` [N, 3], ``keys.STRESS``
    [B, 3, 3] when stress is trained); targets are cast to the output dtype. Returns a dict with
    ``"energy"``, ``"forces"``, ``"stress"`` (unweighted) and ``"total"`` (weighted, times
    ``batch.weight``).
    """
    energy = out[keys.ENERGY]
    dtype = energy.dtype
    zero = energy.sum() * 0.0
    terms = {"energy": zero, "forces": zero, "stress": zero}
    if weights.energy > 0 and counts.energy > 0:
        m = batch.energy_mask
        diff = (energy[m] - batch.energy[m].to(dtype)) / batch.n_atoms[m].to(dtype)
        terms["energy"] = elementwise(diff, weights.kind, weights.delta).sum() / counts.energy
    if weights.forces > 0 and counts.forces > 0 and keys.FORCES in out:
        m = batch.forces_mask
        diff = out[keys.FORCES][m] - batch.forces[m].to(dtype)
        terms["forces"] = elementwise(diff, weights.kind, weights.delta).sum() / (3 * counts.forces)
    if weights.stress > 0 and counts.stress > 0 and keys.STRESS in out:
        m = batch.stress_mask
        diff = out[keys.STRESS][m] - batch.stress[m].to(dtype)
        terms["stress"] = elementwise(diff, weights.kind, weights.delta).sum() / (9 * counts.stress)
    total = weights.energy * terms["energy"] + weights.forces * terms["forces"] + weights.stress * terms["stress"]
    terms["total"] = total * batch.weight
    return terms
