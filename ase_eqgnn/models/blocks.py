"""Building blocks shared by the model families.

=====================  ==========================================================================
block                  maths
=====================  ==========================================================================
:class:`BesselBasis`   e_n(r) = sqrt(2 / r_c) sin(n π r / r_c) / r,   n = 1..n_radial     [E, n_radial]
:class:`PolynomialCutoff`
                       f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_c,
                       f = 0 for x >= 1; f, f' and f'' vanish at r_c (smooth forces)      [E]
:class:`SpeciesIndex`  atomic number Z -> row of the model's species list (buffer lookup) [N]
:class:`SpeciesEmbedding`
                       species index -> learnable vector                                  [N, F]
:class:`MLP`           Linear -> SiLU -> ... -> Linear
=====================  ==========================================================================

Distances are in Å. Every block works in float32 and float64 and on any device.

Example
-------
>>> import torch
>>> r = torch.tensor([1.0, 2.5, 4.999])
>>> BesselBasis(8, cutoff=5.0)(r).shape, PolynomialCutoff(5.0)(r)[-1].item() < 1e-6
(torch.Size([3, 8]), True)
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

from ase.data import chemical_symbols

_MAX_Z = len(chemical_symbols)  # 119: 0 (X) .. 118 (Og)


class BesselBasis(nn.Module):
    """Radial Bessel functions e_n(r) = sqrt(2/r_c) sin(n π r / r_c) / r, n = 1..n_radial.

    Written as ``sqrt(2/r_c) (n π / r_c) sinc(n r / r_c)`` so that it is finite (and differentiable)
    at r = 0. Input: distances [E] in Å; output [E, n_radial] in Å^-3/2. The frequencies n π / r_c
    are a buffer (``trainable=True`` makes them parameters, as in DimeNet).
    """

    def __init__(self, n_radial: int, cutoff: float, trainable: bool = False):
        super().__init__()
        if n_radial < 1:
            raise ValueError(f"n_radial must be a positive integer, got {n_radial}")
        self.cutoff = float(cutoff)
        n = torch.arange(1, n_radial + 1, dtype=torch.get_default_dtype())
        freq = n * math.pi / self.cutoff
        if trainable:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        # sin(w r) / r = w * sinc(w r / π); torch.sinc(x) = sin(π x) / (π x).
        w = self.freq.to(r.dtype)
        return self.prefactor * w * torch.sinc(r[:, None] * w / math.pi)

    def extra_repr(self) -> str:
        return f"n_radial={self.freq.numel()}, cutoff={self.cutoff}"


class PolynomialCutoff(nn.Module):
    """Smooth cutoff envelope (NequIP's polynomial, p = 6 by default): [E] Å -> [E] (unitless).

    f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x = r / r_c < 1, else 0.
    f(0) = 1, and f, df/dr and d²f/dr² are zero at r = r_c, so energies and forces are continuous
    when a neighbour crosses the cutoff.
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        if p < 2:
            raise ValueError(f"the envelope exponent p must be >= 2 for smooth forces, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.cutoff
        f = (1.0 - 0.5 * (p + 1) * (p + 2) * x.pow(p) + p * (p + 2) * x.pow(p + 1)
             - 0.5 * p * (p + 1) * x.pow(p + 2))
        return torch.where(x < 1.0, f, torch.zeros_like(f))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


def normalize_species(species: Sequence) -> List[int]:
    """Atomic numbers (ints or element symbols) -> sorted list of distinct ints; ValueError if bad."""
    if isinstance(species, (str, bytes)) or not hasattr(species, "__iter__"):
        raise ValueError(f"species must be a list of atomic numbers or element symbols, got {species!r}")
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in chemical_symbols[1:]:
                raise ValueError(f"unknown element symbol {s!r} in species")
            z = chemical_symbols.index(s)
        else:
            try:
                z = int(s)
            except (TypeError, ValueError):
                raise ValueError(f"species entries must be atomic numbers or symbols, got {s!r}") from None
            if z != s or not 1 <= z < _MAX_Z:
                raise ValueError(f"atomic number {s!r} in species is not an element (1..{_MAX_Z - 1})")
        out.append(z)
    if not out:
        raise ValueError("species must name at least one element")
    if len(set(out)) != len(out):
        raise ValueError(f"species lists an element twice: {species!r}")
    return sorted(out)


def _format_species(species: Sequence[int]) -> str:
    return "[" + ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in species) + "]"


class SpeciesIndex(nn.Module):
    """Atomic numbers [N] (int64) -> indices [N] into the model's ``species`` list.

    The lookup is a buffer of size 119 (-1 for elements the model does not know), so it moves with the
    model to any device. An unknown element raises ``ValueError`` naming it and the model's species
    (this check reads one boolean back from the device).
    """

    def __init__(self, species: Sequence[int]):
        super().__init__()
        self.species = normalize_species(species)
        table = torch.full((_MAX_Z,), -1, dtype=torch.long)
        table[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("table", table)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.to(device=self.table.device, dtype=torch.long)
        idx = self.table[numbers.clamp(0, _MAX_Z - 1)]
        bad = (idx < 0) | (numbers < 0) | (numbers >= _MAX_Z)
        # (checked when not being captured into a CUDA graph: a check reads the device back)
        capturing = idx.is_cuda and torch.cuda.is_current_stream_capturing()
        if numbers.numel() and not capturing and bool(bad.any()):
            unknown = sorted(set(numbers[bad].tolist()))
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" if 0 < z < _MAX_Z else f"Z={z}"
                              for z in unknown)
            raise ValueError(f"unknown element {names} for this model; its species are "
                             f"{_format_species(self.species)}")
        return idx

    def extra_repr(self) -> str:
        return f"species={self.species}"


class SpeciesEmbedding(nn.Module):
    """Species indices [N] (from :class:`SpeciesIndex`) -> learnable features [N, features]."""

    def __init__(self, n_species: int, features: int):
        super().__init__()
        self.embedding = nn.Embedding(n_species, features)

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.embedding(species)


class MLP(nn.Sequential):
    """Dense network ``dims[0] -> dims[1] -> ... -> dims[-1]``: Linear, SiLU between layers.

    ``bias_last=False`` drops the bias of the last layer (used where the output must vanish with
    its input); ``act_last=True`` also applies SiLU after the last layer.
    """

    def __init__(self, dims: Sequence[int], bias_last: bool = True, act_last: bool = False):
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
        layers: List[nn.Module] = []
        for k in range(len(dims) - 1):
            last = k == len(dims) - 2
            layers.append(nn.Linear(dims[k], dims[k + 1], bias=bias_last or not last))
            if not last or act_last:
                layers.append(nn.SiLU())
        super().__init__(*layers)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``int(value)`` if it is an integer >= minimum (bools rejected), else ValueError naming it."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"hyper-parameter {name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"hyper-parameter {name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number > 0, else ValueError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"hyper-parameter {name} must be a positive number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0:
        raise ValueError(f"hyper-parameter {name} must be a finite positive number, got {value!r}")
    return out


def edge_lengths(edge_vec: torch.Tensor) -> torch.Tensor:
    """|r_ij| [E] from edge vectors [E, 3] (Å)."""
    return torch.linalg.vector_norm(edge_vec, dim=-1)


__all__ = [
    "BesselBasis", "PolynomialCutoff",
    "SpeciesIndex", "SpeciesEmbedding", "MLP",
    "normalize_species", "check_positive_int", "check_positive_float", "edge_lengths",
]
