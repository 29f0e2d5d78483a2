"""The calculator's checks of a structure before the model's answer is trusted.

Two checks, each cheap in MD:

- overlap: two atoms closer than ``min_distance`` (Å) are a user's mistake or a blown-up simulation,
  never physics; :class:`~ase_eqgnn.errors.AtomsTooCloseError`.
- domain: a pair of elements closer than ``fraction`` x the shortest distance of that pair in the
  model's training data (``Potential.domain``, :mod:`ase_eqgnn.domain`) is outside what the model
  learnt; its energy there is a guess (two Cu atoms 0.5 Å apart: +0.65 eV from a model trained on
  EMT data, 337 eV from EMT). ``mode`` "warn" warns once per calculator, "raise" raises
  :class:`~ase_eqgnn.errors.OutOfDomainError`, "off" skips; a model without a record is not checked.

Why they are cheap: between two rebuilds of a Verlet list (built with ``cutoff + skin``) no atom
moves more than ``skin / 2``, so no pair comes closer by more than ``skin``. Pairs outside the
list's cutoff at the rebuild are at least ``cutoff`` apart. If every pair at the rebuild is at
least ``skin`` beyond a check's threshold, that check cannot fail before the next rebuild and is
skipped until then.

>>> import torch
>>> from ase.build import bulk
>>> from ase_eqgnn.graph import AtomicGraph
>>> g = AtomicGraph.from_atoms(bulk("Cu", "fcc", a=3.6)).with_neighbors(3.0)
>>> checks = StructureChecks(min_distance=0.5, domain={"Cu-Cu": 2.5}, mode="raise", fraction=0.75,
...                          cutoff=3.0)
>>> checks(g, rebuilt=True, skin=0.5)   # 2.55 Å apart: fine, and provably so until a rebuild
>>> checks.skips_until_rebuild
True
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Optional

import torch
from ase.data import chemical_symbols

from .domain import DEFAULT_FRACTION, closest_violation, pair_key
from .errors import AtomsTooCloseError, OutOfDomainError
from .graph import AtomicGraph, edge_vectors

DOMAIN_MODES = ("warn", "raise", "off")

#: ``describe(i, j)`` -> "atoms 3 (Cu) and 7 (Cu)": how a message names a pair of global indices.
Describe = Callable[[int, int], str]


def check_fraction(fraction) -> float:
    """``domain_fraction`` as a float in (0, 1], else a ValueError naming it."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"domain_fraction must be a number in (0, 1], got {fraction!r}") from None
    if isinstance(fraction, bool) or not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"domain_fraction must be a number in (0, 1], got {fraction!r}")
    return value


def check_mode(mode) -> str:
    """``domain_check`` as one of :data:`DOMAIN_MODES`, else a ValueError naming it."""
    if not isinstance(mode, str) or mode not in DOMAIN_MODES:
        raise ValueError(f"domain_check must be one of {', '.join(map(repr, DOMAIN_MODES))}, "
                         f"got {mode!r}")
    return mode


class StructureChecks:
    """Overlap and training-domain checks of graphs with their neighbour lists (see the module doc).

    ``min_distance`` (Å, 0 disables), ``domain`` (the model's record or None), ``mode``
    ("warn" | "raise" | "off"), ``fraction`` in (0, 1], ``cutoff`` of the neighbour list (Å).
    Changing ``min_distance``, ``mode`` or ``fraction`` takes effect at the next call.
    """

    def __init__(self, min_distance: float, domain: Optional[Dict[str, float]], mode: str = "warn",
                 fraction: float = DEFAULT_FRACTION, cutoff: float = math.inf):
        self.min_distance = min_distance
        self.domain = dict(domain) if domain else None
        self.mode = check_mode(mode)
        self.fraction = check_fraction(fraction)
        self.cutoff = float(cutoff)
        self.warned = False
        # No pair comes closer than this (Å) before the next rebuild.
        self._closest_until_rebuild = -math.inf
        # (mode, fraction) under which the domain check was proven unable to fail until a rebuild.
        self._domain_safe_for = None

    @property
    def skips_until_rebuild(self) -> bool:
        """Whether both checks are proven unable to fail before the next rebuild."""
        return ((self.min_distance <= 0 or self._closest_until_rebuild >= self.min_distance)
                and (not self._domain_active() or self._domain_safe_for == (self.mode, self.fraction)))

    def _domain_active(self) -> bool:
        return self.domain is not None and self.mode != "off" and not (
            self.mode == "warn" and self.warned)

    def __call__(self, graph: AtomicGraph, rebuilt: Optional[bool], skin: float = 0.0,
                 describe: Optional[Describe] = None) -> None:
        """Check ``graph`` (its pairs within the cutoff). ``rebuilt``: True when its Verlet list
        (``skin`` Å) was just rebuilt (a proof is made for the calls up to the next rebuild), False
        for a later call on the same list, None for a one-off list (checked in full, and the proofs
        for the Verlet list are left alone). ``describe`` names a pair in messages."""
        name = describe or (lambda i, j: _atoms(graph, i, j))
        describe = lambda i, j: name(min(i, j), max(i, j))  # noqa: E731 (lower index first)
        if rebuilt is None:
            if self.min_distance > 0:
                self._overlaps(graph, describe)
            if self._domain_active():
                self._check_domain(graph, False, 0.0, describe)
            return
        if rebuilt:
            self._closest_until_rebuild, self._domain_safe_for = -math.inf, None
        if self.min_distance > 0 and not self._closest_until_rebuild >= self.min_distance:
            shortest = min(self._overlaps(graph, describe), self.cutoff)
            if rebuilt:
                self._closest_until_rebuild = shortest - skin
        if self._domain_active() and self._domain_safe_for != (self.mode, self.fraction):
            self._check_domain(graph, rebuilt, skin, describe)

    def _overlaps(self, graph: AtomicGraph, describe: Describe) -> float:
        """AtomsTooCloseError if two atoms are closer than ``min_distance``; the shortest edge (Å)."""
        if graph.num_edges == 0:
            return math.inf
        d = edge_vectors(graph.positions.detach(), graph.cell, graph.batch, graph.edge_index,
                         graph.shifts).norm(dim=1)
        k = int(torch.argmin(d))
        shortest = float(d[k])
        if shortest < self.min_distance:
            i, j = (int(x) for x in graph.edge_index[:, k])
            raise AtomsTooCloseError(
                f"{describe(i, j)} are {shortest:.3g} Å apart (closer than min_distance="
                f"{self.min_distance} Å): overlapping atoms; fix the structure")
        return shortest

    def _check_domain(self, graph: AtomicGraph, rebuilt: bool, skin: float,
                      describe: Describe) -> None:
        if rebuilt and self.fraction * max(self.domain.values()) <= self.cutoff - skin:
            # Thresholds raised by skin / fraction: nothing closer than threshold + skin now means
            # nothing closer than the threshold before the next rebuild.
            inflated = {pair: d + skin / self.fraction for pair, d in self.domain.items()}
            if closest_violation(graph, inflated, self.fraction) is None:
                self._domain_safe_for = (self.mode, self.fraction)
                return
        found = closest_violation(graph, self.domain, self.fraction)
        if found is None:
            return
        i, j, distance, recorded = found
        pair = pair_key(int(graph.numbers[i]), int(graph.numbers[j]))
        message = (f"{describe(i, j)} are {distance:.3g} Å apart, closer than {self.fraction:g} x "
                   f"{recorded:.3g} Å, the shortest {pair} distance in the model's training data: "
                   "the model has not seen such structures and its energies and forces here are "
                   "guesses")
        if self.mode == "raise":
            raise OutOfDomainError(message + "; pass domain_check='warn' or 'off' to "
                                   "EqGNNCalculator to evaluate anyway")
        self.warned = True
        warnings.warn(message + " (warned once per calculator; domain_check='raise' stops "
                      "instead, 'off' silences this)", stacklevel=4)


def _atoms(graph: AtomicGraph, i: int, j: int) -> str:
    zi, zj = int(graph.numbers[i]), int(graph.numbers[j])
    return f"atoms {i} ({chemical_symbols[zi]}) and {j} ({chemical_symbols[zj]})"


__all__ = ["StructureChecks", "DOMAIN_MODES", "check_fraction", "check_mode"]
