"""CGnet-style prior energies for a coarse-grained chain of beads (Wang et al., ACS Cent. Sci. 2019).

For bead positions ``X`` [n_beads, 3] (Å) of one molecule whose beads form a chain in index order,
the prior energy (eV) is

    U(X) = sum_bonds  k_b / 2 (r_b - r0_b)^2                 r_b = |X_{i+1} - X_i|
         + sum_angles k_a / 2 (theta_a - theta0_a)^2         theta_a = angle(X_i, X_{i+1}, X_{i+2})
         + sum_pairs  eps (sigma_p / r_p)^n                  pairs |i - j| >= min_separation
         + sum_dihedrals sum_{m=1..M} c_dm cos(m phi_d) + s_dm sin(m phi_d)
                                                             phi_d = dihedral(X_i, ..., X_{i+3})

Bonds join consecutive beads, angles consecutive triples; the repulsion acts between beads at least
``min_separation`` (default 3) apart along the chain, which the bond and angle terms leave free.
Forces are ``-dU/dX`` by autograd.

Fit (:meth:`CGPrior.fit`), by Boltzmann inversion of the data at its temperature ``T`` (kT =
``ase.units.kB * T``): a harmonic term makes its coordinate Gaussian with variance ``kT / k``, so

    r0 = mean(r),   k_b = kT / var(r)       (and likewise theta0, k_a from the angles)

(CGnet's rule), and for each dihedral of consecutive quadruples (IUPAC sign, as
:func:`ase_eqgnn.cg.ramachandran.dihedrals`) the Fourier series of order M (default 4) closest in
least squares to its Boltzmann-inverted distribution ``-kT ln p(phi)`` on 36 bins (bins the data
never visit are set kT above the highest visited one). Why dihedrals: every model family here is
invariant under reflections, so a network alone gives a molecule and its mirror image the same
free energy; a chain's dihedral is odd under reflection, and the ``sin`` terms are what tell a
left-handed from a right-handed backbone (ala2: alpha_R is populated, alpha_L not). It neglects the Jacobians (r^2 for a distance, sin(theta) for an angle) in the
coordinate's distribution; for the stiff bonds and angles of a backbone map (relative spread of a
few per cent) the mean shifts by var/r0 or var*cot(theta0), far below the spread itself. The
repulsion takes ``sigma_p`` = the shortest distance of pair ``p`` in the data and ``eps = kT``: it
costs kT at the closest approach ever sampled and rises steeply below it, keeping CG MD out of
regions the data never visited.

Shapes: positions [..., n_beads, 3] -> energy [...]; float32 or float64, any device (the module's
buffers follow ``.to()``). Parameters are buffers (the prior is fixed; the network learns the rest).

Example::

    >>> import torch
    >>> x = torch.tensor([[0., 0, 0], [1.5, 0, 0], [1.5, 1.5, 0], [3.0, 1.5, 0.3]], dtype=torch.float64)
    >>> prior = CGPrior.fit(x[None] + 0.01 * torch.randn(100, 4, 3, dtype=torch.float64), 300.0)
    >>> energy, forces = prior.energy_and_forces(x)
    >>> energy.shape, forces.shape
    (torch.Size([]), torch.Size([4, 3]))
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from ase import units

__all__ = ["CGPrior", "bond_lengths", "bond_angles", "chain_terms", "chain_dihedrals", "dihedral_angles",
           "fit_dihedral_series"]


def chain_terms(n_beads: int, min_separation: int = 3) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of a chain: bonds [n-1, 2], angles [n-2, 3], repulsive pairs [P, 2] (``j - i >=
    min_separation``)."""
    if n_beads < 2:
        raise ValueError(f"a CG chain needs at least 2 beads, got {n_beads}")
    if min_separation < 2:
        raise ValueError("min_separation must be >= 2 (bonded pairs are never repulsive pairs)")
    i = np.arange(n_beads)
    bonds = np.stack([i[:-1], i[1:]], axis=1)
    angles = np.stack([i[:-2], i[1:-1], i[2:]], axis=1) if n_beads >= 3 else np.zeros((0, 3), np.int64)
    pairs = np.array([(a, b) for a in range(n_beads) for b in range(a + min_separation, n_beads)],
                     dtype=np.int64).reshape(-1, 2)
    return bonds.astype(np.int64), angles.astype(np.int64), pairs


def chain_dihedrals(n_beads: int) -> np.ndarray:
    """Index array [n - 3, 4] of the dihedrals of consecutive quadruples of a chain."""
    i = np.arange(max(n_beads - 3, 0))
    return np.stack([i, i + 1, i + 2, i + 3], axis=1).astype(np.int64).reshape(-1, 4)


def dihedral_angles(positions: torch.Tensor, quadruples: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (radians, IUPAC sign) [..., D] of ``quadruples`` [D, 4]."""
    a, b, c, d = (positions[..., quadruples[:, k], :] for k in range(4))
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def fit_dihedral_series(phi: np.ndarray, kT: float, order: int, bins: int = 36) -> Tuple[np.ndarray, np.ndarray]:
    """Fourier coefficients (cos [order], sin [order]; eV) of ``-kT ln p(phi)`` (phi radians
    [frames]) by least squares on ``bins`` bins; unvisited bins kT above the highest visited."""
    counts, edges = np.histogram(np.asarray(phi, dtype=np.float64), bins=bins, range=(-np.pi, np.pi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    visited = counts > 0
    free = np.zeros(bins)
    free[visited] = -kT * np.log(counts[visited] / counts.sum())
    free[~visited] = free[visited].max() + kT
    m = np.arange(1, order + 1)
    basis = np.concatenate([np.ones((bins, 1)), np.cos(centres[:, None] * m), np.sin(centres[:, None] * m)], 1)
    coef, *_ = np.linalg.lstsq(basis, free, rcond=None)
    return coef[1:order + 1], coef[order + 1:]


def bond_lengths(positions: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """|X_j - X_i| [..., P] for ``pairs`` [P, 2] of ``positions`` [..., n, 3]."""
    return (positions[..., pairs[:, 1], :] - positions[..., pairs[:, 0], :]).norm(dim=-1)


def bond_angles(positions: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Angle at the middle bead (radians) [..., A] for ``triples`` [A, 3]; atan2(|u x v|, u . v) has
    a finite gradient everywhere except at exactly 0 and pi (acos has none near them)."""
    u = positions[..., triples[:, 0], :] - positions[..., triples[:, 1], :]
    v = positions[..., triples[:, 2], :] - positions[..., triples[:, 1], :]
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


class CGPrior(torch.nn.Module):
    """Harmonic bonds and angles plus a short-range repulsion on a bead chain (module docstring).

    Args:
        bonds, angles, pairs: index arrays [B, 2], [A, 3], [P, 2].
        r0, k_bond: [B] Å and eV/Å^2; theta0, k_angle: [A] rad and eV/rad^2;
        sigma: [P] Å; epsilon: eV; exponent: the repulsion's power n;
        temperature_K: the temperature the constants were fitted at (recorded, not used).
    """

    def __init__(self, bonds, angles, pairs, r0, k_bond, theta0, k_angle, sigma,
                 epsilon: float, exponent: int = 12, temperature_K: float = 300.0,
                 dihedrals=(), dihedral_cos=(), dihedral_sin=()) -> None:
        super().__init__()
        f64 = dict(dtype=torch.float64)
        tensors = {"bonds": torch.as_tensor(np.asarray(bonds), dtype=torch.long).reshape(-1, 2),
                   "angles": torch.as_tensor(np.asarray(angles), dtype=torch.long).reshape(-1, 3),
                   "pairs": torch.as_tensor(np.asarray(pairs), dtype=torch.long).reshape(-1, 2),
                   "r0": torch.as_tensor(np.asarray(r0), **f64).reshape(-1),
                   "k_bond": torch.as_tensor(np.asarray(k_bond), **f64).reshape(-1),
                   "theta0": torch.as_tensor(np.asarray(theta0), **f64).reshape(-1),
                   "k_angle": torch.as_tensor(np.asarray(k_angle), **f64).reshape(-1),
                   "sigma": torch.as_tensor(np.asarray(sigma), **f64).reshape(-1),
                   "dihedrals": torch.as_tensor(np.asarray(dihedrals), dtype=torch.long).reshape(-1, 4)}
        n_dihedrals = tensors["dihedrals"].shape[0]
        for name, values in (("dihedral_cos", dihedral_cos), ("dihedral_sin", dihedral_sin)):
            t = torch.as_tensor(np.asarray(values), **f64)
            tensors[name] = t.reshape(n_dihedrals, -1) if t.numel() else t.reshape(n_dihedrals, 0)
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"prior constants {name} must be finite")
        if tensors["dihedral_cos"].shape != tensors["dihedral_sin"].shape:
            raise ValueError("dihedral_cos and dihedral_sin need one row of one order per dihedral")
        for name, ref, key in (("r0", "bonds", "bond"), ("k_bond", "bonds", "bond"),
                               ("theta0", "angles", "angle"), ("k_angle", "angles", "angle"),
                               ("sigma", "pairs", "pair")):
            if tensors[name].shape[0] != tensors[ref].shape[0]:
                raise ValueError(f"{name} needs one value per {key}: {tensors[name].shape[0]} for "
                                 f"{tensors[ref].shape[0]}")
            if not bool(torch.isfinite(tensors[name]).all()):
                raise ValueError(f"prior constants {name} must be finite")
        for name in ("k_bond", "k_angle", "sigma", "r0"):
            if bool((tensors[name] <= 0).any()):
                raise ValueError(f"prior constants {name} must be positive")
        if not (np.isfinite(epsilon) and epsilon >= 0 and int(exponent) >= 1 and temperature_K > 0):
            raise ValueError("epsilon must be >= 0, exponent >= 1 and temperature_K > 0")
        if tensors["bonds"].numel() == 0:
            raise ValueError("a CG prior needs at least one bond")
        n_beads = int(tensors["bonds"].max()) + 1
        for name in ("bonds", "angles", "pairs", "dihedrals"):
            t = tensors[name]
            same = any(bool((t[:, a] == t[:, b]).any()) for a in range(t.shape[1])
                       for b in range(a + 1, t.shape[1]))
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_beads or same):
                raise ValueError(f"prior {name} must index distinct beads of the chain 0..{n_beads - 1}")
        # Not in state_dict: a checkpoint stores the prior as data (to_dict), not as tensors.
        for name, value in tensors.items():
            self.register_buffer(name, value, persistent=False)
        self.epsilon, self.exponent, self.temperature_K = float(epsilon), int(exponent), float(temperature_K)

    @property
    def n_beads(self) -> int:
        return int(self.bonds.max()) + 1

    @classmethod
    def fit(cls, positions, temperature_K: float = 300.0, *, min_separation: int = 3,
            exponent: int = 12, dihedral_order: int = 4) -> "CGPrior":
        """Fit to bead positions [frames, n_beads, 3] (Å) sampled at ``temperature_K`` (module
        docstring's rules; ``dihedral_order`` 0: no dihedral terms). Needs frames in which every
        bond and angle fluctuates."""
        x = torch.as_tensor(np.asarray(positions) if not torch.is_tensor(positions) else positions,
                            dtype=torch.float64).detach().cpu()
        if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] < 2:
            raise ValueError(f"positions must be [frames >= 2, n_beads, 3], got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("bead positions must be finite")
        if not temperature_K > 0:
            raise ValueError(f"temperature_K must be positive, got {temperature_K}")
        kT = units.kB * float(temperature_K)
        bonds, angles, pairs = (torch.as_tensor(a) for a in chain_terms(x.shape[1], min_separation))
        r = bond_lengths(x, bonds)
        theta = bond_angles(x, angles)
        for name, values in (("bond", r), ("angle", theta)):
            if values.numel() and bool((values.var(0) <= 0).any()):
                raise ValueError(f"a {name} does not fluctuate in the data: cannot fit its constant")
        sigma = bond_lengths(x, pairs).amin(0)
        quads = torch.as_tensor(chain_dihedrals(x.shape[1]) if dihedral_order > 0 else np.zeros((0, 4)),
                                dtype=torch.long)
        phi = dihedral_angles(x, quads).numpy()
        series = [fit_dihedral_series(phi[:, d], kT, int(dihedral_order)) for d in range(len(quads))]
        return cls(bonds, angles, pairs, r.mean(0), kT / r.var(0), theta.mean(0), kT / theta.var(0),
                   sigma, epsilon=kT, exponent=exponent, temperature_K=temperature_K,
                   dihedrals=quads, dihedral_cos=[c for c, _ in series], dihedral_sin=[s for _, s in series])

    def _dihedral_energies(self, positions: torch.Tensor) -> torch.Tensor:
        """[..., D] eV: each dihedral's Fourier series."""
        order = self.dihedral_cos.shape[1]
        if order == 0 or self.dihedrals.shape[0] == 0:
            return positions.new_zeros(positions.shape[:-2] + (self.dihedrals.shape[0],))
        phi = dihedral_angles(positions, self.dihedrals)
        m = torch.arange(1, order + 1, dtype=positions.dtype, device=positions.device)
        angle = phi[..., None] * m
        dtype = positions.dtype
        return (self.dihedral_cos.to(dtype) * torch.cos(angle)
                + self.dihedral_sin.to(dtype) * torch.sin(angle)).sum(-1)

    def terms(self, positions: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Energies (eV) of the bond, angle and repulsion terms, each [...]."""
        dtype = positions.dtype
        r = bond_lengths(positions, self.bonds)
        theta = bond_angles(positions, self.angles)
        d = bond_lengths(positions, self.pairs)
        return {
            "bonds": (0.5 * self.k_bond.to(dtype) * (r - self.r0.to(dtype)) ** 2).sum(-1),
            "angles": (0.5 * self.k_angle.to(dtype) * (theta - self.theta0.to(dtype)) ** 2).sum(-1),
            "repulsion": (self.epsilon * (self.sigma.to(dtype) / d) ** self.exponent).sum(-1),
            "dihedrals": self._dihedral_energies(positions).sum(-1),
        }

    def bead_energies(self, positions: torch.Tensor) -> torch.Tensor:
        """The prior energy split over beads [..., n_beads] (eV): each term's energy shared equally
        among the beads it involves, so the beads' energies sum to :meth:`forward`."""
        if positions.shape[-2:] != (self.n_beads, 3):
            raise ValueError(f"positions have shape {tuple(positions.shape)}, the prior needs "
                             f"(..., {self.n_beads}, 3)")
        dtype = positions.dtype
        out = positions.new_zeros(positions.shape[:-1])
        r = bond_lengths(positions, self.bonds)
        theta = bond_angles(positions, self.angles)
        d = bond_lengths(positions, self.pairs)
        per_term = (
            (self.bonds, 0.5 * self.k_bond.to(dtype) * (r - self.r0.to(dtype)) ** 2),
            (self.angles, 0.5 * self.k_angle.to(dtype) * (theta - self.theta0.to(dtype)) ** 2),
            (self.pairs, self.epsilon * (self.sigma.to(dtype) / d) ** self.exponent),
            (self.dihedrals, self._dihedral_energies(positions)),
        )
        for index, energy in per_term:
            share = energy / index.shape[1]
            for column in range(index.shape[1]):
                out = out.index_add(-1, index[:, column], share)
        return out

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Prior energy [...] (eV) of ``positions`` [..., n_beads, 3] (Å)."""
        if positions.shape[-2:] != (self.n_beads, 3):
            raise ValueError(f"positions have shape {tuple(positions.shape)}, the prior needs "
                             f"(..., {self.n_beads}, 3)")
        return sum(self.terms(positions).values())

    def energy_and_forces(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(energy [...] eV, forces [..., n_beads, 3] eV/Å = -dU/dX)."""
        with torch.enable_grad():
            x = positions.detach().requires_grad_(True)
            energy = self(x)
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach(), -grad

    # -- serialisation (plain numbers: a checkpoint stores it as JSON, nothing is unpickled) -----
    def to_dict(self) -> Dict:
        out = {name: getattr(self, name).tolist() for name in
               ("bonds", "angles", "pairs", "r0", "k_bond", "theta0", "k_angle", "sigma",
                "dihedrals", "dihedral_cos", "dihedral_sin")}
        out.update(epsilon=self.epsilon, exponent=self.exponent, temperature_K=self.temperature_K)
        return out

    @classmethod
    def from_dict(cls, data: Dict) -> "CGPrior":
        keys = {"bonds", "angles", "pairs", "r0", "k_bond", "theta0", "k_angle", "sigma", "epsilon",
                "exponent", "temperature_K", "dihedrals", "dihedral_cos", "dihedral_sin"}
        optional = {"dihedrals", "dihedral_cos", "dihedral_sin"}  # a prior without dihedral terms
        if not keys - optional <= set(data) <= keys:
            raise ValueError(f"CG prior keys must be {sorted(keys)}; missing "
                             f"{sorted(keys - set(data))}, unknown {sorted(set(data) - keys)}")
        return cls(**data)

    def extra_repr(self) -> str:
        return (f"bonds={len(self.bonds)}, angles={len(self.angles)}, pairs={len(self.pairs)}, "
                f"dihedrals={len(self.dihedrals)} (order {self.dihedral_cos.shape[1]}), "
                f"T={self.temperature_K:g} K, repulsion eps={self.epsilon:.4g} eV n={self.exponent}")
