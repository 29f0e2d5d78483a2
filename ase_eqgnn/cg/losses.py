"""Loss terms of the back-mapping VAE (positions in Å, losses in Å² or nats).

For generated ``x`` and reference ``x*`` [F, n, 3]:

- reconstruction: mean squared atom displacement ``(1/n) sum_a |x_a - x*_a|^2`` (Å²);
- KL between the diagonal Gaussians ``q = N(mu_q, s_q^2)`` and ``p = N(mu_p, s_p^2)``, summed over
  latent dimensions, averaged over beads and frames::

      KL = 1/2 sum_d [ log s_p^2 - log s_q^2 + (s_q^2 + (mu_q - mu_p)^2) / s_p^2 - 1 ]

- bonds: mean ``(|x_i - x_j| - |x*_i - x*_j|)^2`` over the topology's bonds (Å²);
- angles: mean ``(theta_ijk - theta*_ijk)^2`` (rad²) over the bond angles i-j-k (j the centre),
  ``theta = atan2(|u x w|, u . w)`` with ``u = x_i - x_j``, ``w = x_k - x_j``;
- steric: ``(1/n) sum_pairs relu(d0 - d_ij)^2`` averaged over frames, over heavy-atom pairs more
  than 3 bonds apart (the pairs of the clash metric), ``d0`` a threshold (Å), ``n`` the atom count
  (so the weight means the same for small and large molecules);
- sample heavy-atom MSD: the reconstruction term restricted to heavy atoms, applied to a *prior*
  sample (off by default). Where the CG beads pin the heavy atoms down (a backbone map of a small
  peptide), this teaches the decoder to put the latent's freedom into the hydrogens (methyl rotors)
  and keeps prior samples on the reference's heavy-atom frame; it is mean-seeking, so leave it off
  when heavy atoms are genuinely multimodal given the beads (side chains under a residue map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Sequence

import numpy as np
import torch

from .metrics import clash_mask
from .settings import Settings

__all__ = ["LossWeights", "reconstruction_loss", "kl_divergence", "bond_loss", "angle_loss",
           "steric_loss", "heavy_reconstruction_loss", "angle_triplets", "steric_pairs", "GeometryTerms"]


@dataclass
class LossWeights(Settings):
    """Weights of the loss terms; ``beta`` multiplies the KL term."""

    what: ClassVar[str] = "loss"

    recon: float = 1.0
    beta: float = 0.002
    bond: float = 1.0
    angle: float = 0.1
    steric: float = 1.0
    steric_threshold: float = 2.2
    sample_geometry: float = 0.5  # weight of bond/angle/steric terms on prior samples
    sample_heavy_recon: float = 0.0  # weight of the heavy-atom MSD of prior samples



def reconstruction_loss(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean squared displacement per atom (Å²)."""
    return ((x - ref) ** 2).sum(-1).mean()


def heavy_reconstruction_loss(x: torch.Tensor, ref: torch.Tensor, heavy: torch.Tensor) -> torch.Tensor:
    """Mean squared displacement of the atoms where ``heavy`` [n] (bool) is set (Å²)."""
    return reconstruction_loss(x[:, heavy], ref[:, heavy])


def kl_divergence(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                  logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the last dim, averaged over the rest."""
    kl = 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2)
                * torch.exp(-logvar_p) - 1.0)
    return kl.sum(-1).mean()


def _dist(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(((x[:, i] - x[:, j]) ** 2).sum(-1) + 1e-12)


def _angle(x: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    u = x[:, tri[:, 0]] - x[:, tri[:, 1]]
    w = x[:, tri[:, 2]] - x[:, tri[:, 1]]
    cross = torch.sqrt((torch.linalg.cross(u, w, dim=-1) ** 2).sum(-1) + 1e-12)
    return torch.atan2(cross, (u * w).sum(-1))


def bond_loss(x: torch.Tensor, ref: torch.Tensor, bonds: torch.Tensor) -> torch.Tensor:
    """Mean squared bond-length error (Å²)."""
    if bonds.numel() == 0:
        return x.new_zeros(())
    return ((_dist(x, bonds[:, 0], bonds[:, 1]) - _dist(ref, bonds[:, 0], bonds[:, 1])) ** 2).mean()


def angle_loss(x: torch.Tensor, ref: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Mean squared bond-angle error (rad²)."""
    if triplets.numel() == 0:
        return x.new_zeros(())
    return ((_angle(x, triplets) - _angle(ref, triplets)) ** 2).mean()


def steric_loss(x: torch.Tensor, pairs: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(1/n_atoms) sum relu(threshold - d_ij)^2`` over ``pairs`` [P, 2], mean over frames (Å²)."""
    if pairs.numel() == 0:
        return x.new_zeros(())
    d = _dist(x, pairs[:, 0], pairs[:, 1])
    return (torch.relu(threshold - d) ** 2).sum(-1).mean() / x.shape[-2]


def angle_triplets(n_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """All bond angles ``(i, j, k)`` with j bonded to both i < k, [n_angles, 3]."""
    nbrs = [[] for _ in range(n_atoms)]
    for i, j in np.asarray(bonds).reshape(-1, 2):
        nbrs[i].append(int(j))
        nbrs[j].append(int(i))
    out = [(i, j, k) for j in range(n_atoms) for i in nbrs[j] for k in nbrs[j] if i < k]
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def steric_pairs(elements: Sequence[str], bonds: np.ndarray) -> np.ndarray:
    """Heavy-atom pairs more than 3 bonds apart, [P, 2] (as the clash metric)."""
    return np.argwhere(clash_mask(elements, bonds)).astype(np.int64)


class GeometryTerms(torch.nn.Module):
    """Bond, angle and steric terms of one molecule type (index tensors kept as buffers)."""

    def __init__(self, elements: Sequence[str], bonds: np.ndarray) -> None:
        super().__init__()
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.register_buffer("bonds", torch.as_tensor(bonds))
        self.register_buffer("triplets", torch.as_tensor(angle_triplets(len(elements), bonds)))
        self.register_buffer("pairs", torch.as_tensor(steric_pairs(elements, bonds)))
        self.register_buffer("heavy", torch.as_tensor([e != "H" for e in elements], dtype=torch.bool))

    def forward(self, x: torch.Tensor, ref: torch.Tensor, threshold: float) -> Dict[str, torch.Tensor]:
        return {"bond": bond_loss(x, ref, self.bonds), "angle": angle_loss(x, ref, self.triplets),
                "steric": steric_loss(x, self.pairs, threshold)}
