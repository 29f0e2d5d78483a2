"""`EqGNNCalculator`: an equivariant GNN potential behind ASE's Calculator protocol.

Thin by design: ``ase.Atoms`` -> :class:`~ase_eqgnn.graph.AtomicGraph` (neighbour list reused across
calls with a Verlet skin) -> model -> ``results`` in ASE's units (eV, eV/Å, eV/Å^3).

Example
-------
>>> from ase.build import bulk
>>> from ase_eqgnn import EqGNNCalculator, build_model
>>> atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
>>> atoms.calc = EqGNNCalculator(build_model("painn", ["Cu"], cutoff=4.0, features=16, layers=1))
>>> atoms.get_forces().shape, atoms.get_stress().shape
((4, 3), (6,))
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols

from . import heap, keys
from .checkpoint import load_model
from .compiled import CompiledEnergies
from .errors import AtomsTooCloseError
from .cuda_graphs import CapturedPotential
from .graph import AtomicGraph, edge_vectors
from .models.potential import Potential
from .neighbors import VerletList, batched_neighbor_list

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx yy zz yz xz xy
# cuda_graphs="auto" captures lists of at most this many pairs: above it the GPU's arithmetic, not
# launching kernels, sets the time, and the graph's unpruned skin pairs would only add work.
_GRAPH_MAX_PAIRS = 100_000
# A capture costs about three eager calls. "auto" captures at a list's second call, or at its sixth
# when the previous list was rebuilt within six calls (fast atoms, small skin), so that short-lived
# lists are not captured for a replay or two.
_CAPTURE_AT_CALL, _CAPTURE_AT_CALL_AFTER_SHORT_LIST = 2, 6


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def _resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return device


def _voigt(stress: np.ndarray) -> np.ndarray:
    """3x3 -> the six Voigt components (xx, yy, zz, yz, xz, xy)."""
    return np.array([stress[a, b] for a, b in _VOIGT])


class EqGNNCalculator(Calculator):
    """ASE calculator for ase_eqgnn potentials.

    Parameters
    ----------
    model : path of a checkpoint written by :func:`ase_eqgnn.save_model` (or by ``eqgnn-train``), or a
        :class:`~ase_eqgnn.models.potential.Potential` (copied, so the caller's model is untouched).
    device : "cpu", "cuda" or a torch device.
    dtype : "float32" (default; MD and screening) or "float64" (tight relaxations, finite differences).
    skin : Verlet skin in Å: the neighbour list is built with ``cutoff + skin`` and rebuilt only when
        an atom moved more than ``skin / 2``, or the cell, pbc or atoms changed.
    neighbor_backend : "auto" (vesin-torch for single structures when installed, else our torch cell
        list), "torch" or "vesin".
    min_distance : two atoms closer than this (Å) are an error (overlapping atoms give meaningless
        energies rather than a clear failure otherwise).
    cuda_graphs : on a GPU, replay the model as a CUDA graph captured once per neighbour list
        (:class:`~ase_eqgnn.cuda_graphs.CapturedPotential`): "auto" for lists of up to 100,000
        pairs, from a list's second call on (sixth after a short-lived list); True for every list
        from its first call; False (default) never. Small systems are bound by kernel launches,
        which a replay removes. Experimental: off by default until its CUDA tests
        (``tests/test_cuda.py``) have run on a GPU; on the CPU its fixed-list evaluation is tested.
    keep_freed_memory : on a CPU device, call :func:`ase_eqgnn.heap.keep_freed_memory` (default True):
        glibc keeps the memory torch frees for the next call instead of returning it to the OS,
        which otherwise makes every call fault in its temporaries afresh (15-60 % of a call on
        96-864 atoms here). Process-wide: the process's resident memory stays at its peak.
    compile : evaluate the energy pass (and its gradient) compiled by ``torch.compile``
        (:class:`~ase_eqgnn.compiled.CompiledEnergies`; default False). Pays off in long MD of small
        molecules and ~100-atom systems: on 2 CPU cores PaiNN calls took 0.55-0.8x and ``tp`` calls
        0.23-0.5x the eager time there, and nothing was gained at 864 Cu atoms. The first call
        compiles (tens of seconds; cached on disk for later processes). Needs a C++ compiler on the
        CPU: if compiling fails, the calculator warns and evaluates eagerly. ``calculate_batch``
        stays eager.

    ``implemented_properties``: energy, free_energy, energies (per atom), forces, and stress when the
    cell is periodic in all three directions (otherwise asking for stress raises ASE's
    ``PropertyNotImplementedError``).
    """

    implemented_properties = [keys.ENERGY, keys.FREE_ENERGY, keys.ENERGIES, keys.FORCES, keys.STRESS]

    def __init__(self, model: Union[str, os.PathLike, Potential], device="cpu", dtype="float32",
                 skin: float = 0.5, neighbor_backend: str = "auto", min_distance: float = 0.1,
                 cuda_graphs: Union[bool, str] = False, keep_freed_memory: bool = True,
                 compile: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.device = _resolve_device(device)
        if keep_freed_memory and self.device.type == "cpu":
            heap.keep_freed_memory()
        self.dtype = _resolve_dtype(dtype)
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, map_location="cpu")
        elif isinstance(model, Potential):
            model = copy.deepcopy(model)
        else:
            raise ValueError(f"model must be a checkpoint path or an ase_eqgnn Potential, got "
                             f"{type(model).__name__}")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # only positions and strain need gradients here
        self.cutoff = float(self.model.cutoff)
        self.min_distance = float(min_distance)
        self.neighbors = VerletList(self.cutoff, skin=skin, backend=neighbor_backend)
        self._species = set(int(z) for z in self.model.species)
        # No two atoms come closer than this (Å) before the neighbour list's next rebuild.
        self._closest_until_rebuild = -math.inf
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}")
        if cuda_graphs is True and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        self.cuda_graphs = cuda_graphs if self.device.type == "cuda" else False
        self._captured: Optional[CapturedPotential] = None
        self._calls_on_list = 0  # calls since the neighbour list was last rebuilt
        self._previous_list_calls = _CAPTURE_AT_CALL_AFTER_SHORT_LIST  # the list before it
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if compile and self.cuda_graphs:
            raise ValueError("compile and cuda_graphs cannot be combined: choose one")
        self._energy_fn = CompiledEnergies(self.model) if compile else None

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> "EqGNNCalculator":
        """A calculator for a potential bundled with the package (``eqgnn-models`` lists them)."""
        from .pretrained import pretrained_path

        return cls(pretrained_path(name, kind="potential"), **kwargs)

    # ---------------------------------------------------------------- checks
    def _check_atoms(self, atoms: Atoms) -> None:
        numbers = atoms.get_atomic_numbers()
        unknown = sorted(set(int(z) for z in numbers) - self._species)
        if unknown:
            known = ", ".join(chemical_symbols[z] for z in sorted(self._species))
            raise ValueError(
                f"element(s) {', '.join(chemical_symbols[z] for z in unknown)} not known to this model "
                f"(it was trained on: {known}); use a model trained on these elements")
        positions = atoms.get_positions()
        if not np.isfinite(positions).all():
            bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0][:5].tolist()
            raise ValueError(f"positions contain NaN or infinite values (atoms {bad})")
        if atoms.pbc.any() and not np.isfinite(atoms.cell[:]).all():
            raise ValueError("cell contains NaN or infinite values")

    def _check_overlaps(self, graph: AtomicGraph) -> float:
        """ValueError if two atoms are closer than ``min_distance``; returns the shortest edge (Å)."""
        if graph.num_edges == 0 or self.min_distance <= 0:
            return math.inf
        i, j = graph.edge_index
        d = edge_vectors(graph.positions, graph.cell, graph.batch, graph.edge_index,
                         graph.shifts).norm(dim=1)
        k = int(torch.argmin(d))
        if float(d[k]) < self.min_distance:
            raise AtomsTooCloseError(
                f"atoms {int(i[k])} and {int(j[k])} are {float(d[k]):.3g} Å apart (closer than "
                f"min_distance={self.min_distance} Å): overlapping atoms; fix the structure")
        return float(d[k])

    def _check_overlaps_since_rebuild(self, graph: AtomicGraph, rebuilt: bool) -> None:
        """The overlap check, skipped while the Verlet list proves it cannot fail.

        Between rebuilds no atom moves more than skin/2 from where it was at the rebuild, so no pair
        comes closer by more than the skin. Pairs outside the list were at least ``cutoff + skin``
        apart and pairs in it at least the shortest edge within ``cutoff`` (or ``cutoff``). If that
        bound minus the skin is still >= ``min_distance``, no call checks again until the next rebuild.
        """
        if not rebuilt and self._closest_until_rebuild >= self.min_distance:
            return
        shortest = min(self._check_overlaps(graph), self.cutoff)
        if rebuilt:
            self._closest_until_rebuild = shortest - self.neighbors.skin

    # ---------------------------------------------------------------- ASE protocol
    def calculate(self, atoms: Optional[Atoms] = None, properties: Sequence[str] = (keys.ENERGY,),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic3d = bool(atoms.pbc.all())
        if keys.STRESS in properties and not periodic3d:
            raise PropertyNotImplementedError(
                "stress is only defined for cells periodic in all three directions "
                f"(this structure has pbc={atoms.pbc.tolist()})")
        self._check_atoms(atoms)
        graph = AtomicGraph.from_atoms(atoms, dtype=self.dtype, device=self.device)
        builds = self.neighbors.builds
        # A CUDA graph evaluates the list as built (fixed shapes); the eager model its pairs within
        # the cutoff.
        i, j, shifts = self.neighbors(graph.positions, graph.cell[0], graph.pbc[0], graph.numbers,
                                      prune=not self.cuda_graphs)
        rebuilt = self.neighbors.builds != builds
        graph.edge_index = torch.stack([i, j])
        graph.shifts = shifts
        self._check_overlaps_since_rebuild(graph, rebuilt)
        out = self._replay(graph, rebuilt, periodic3d) if self.cuda_graphs else None
        if out is None:
            if self.cuda_graphs:
                i, j, shifts = self.neighbors.within_cutoff(graph.positions)
                graph.edge_index, graph.shifts = torch.stack([i, j]), shifts
            out = self._evaluate(graph, periodic3d)
        self.results = self._to_results(out, slice(None), 0, periodic3d)

    def _evaluate(self, graph: AtomicGraph, stress: bool) -> Dict[str, torch.Tensor]:
        """The model's results, through its compiled energy pass where ``compile=True``."""
        if self._energy_fn is None:
            return self.model(graph, forces=True, stress=stress)
        try:
            return self.model(graph, forces=True, stress=stress, energy_fn=self._energy_fn)
        except Exception as err:  # no C++ compiler, an unsupported operation...: eager is still right
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            warnings.warn(f"torch.compile failed, evaluating eagerly from now on "
                          f"({type(err).__name__}: {first_line})")
            self._energy_fn = None
            return self.model(graph, forces=True, stress=stress)

    def _replay(self, graph: AtomicGraph, rebuilt: bool,
                stress: bool) -> Optional[Dict[str, torch.Tensor]]:
        """Results from the CUDA graph of the current neighbour list (captured at its second call),
        or None where the eager model should run instead."""
        if rebuilt:
            self._captured = None  # frees the old graph's memory before a new capture
            self._previous_list_calls, self._calls_on_list = self._calls_on_list, 0
        self._calls_on_list += 1
        if self._captured is None or self._captured.stress != stress:
            short_lived = self._previous_list_calls < _CAPTURE_AT_CALL_AFTER_SHORT_LIST
            capture_at = _CAPTURE_AT_CALL_AFTER_SHORT_LIST if short_lived else _CAPTURE_AT_CALL
            auto = self.cuda_graphs == "auto"
            if graph.num_edges == 0 or (auto and (self._calls_on_list < capture_at
                                                  or graph.num_edges > _GRAPH_MAX_PAIRS)):
                return None
            try:
                self._captured = CapturedPotential(self.model, graph, stress)
            except RuntimeError as err:  # an operation the capture cannot record: stay eager
                warnings.warn(f"CUDA graph capture failed, evaluating eagerly from now on ({err})")
                self._captured, self.cuda_graphs = None, False
                return None
        return self._captured(graph.positions, graph.cell)

    @staticmethod
    def _to_results(out: Dict[str, torch.Tensor], atoms_slice, graph_index: int,
                    with_stress: bool) -> Dict[str, Union[float, np.ndarray]]:
        energy = float(out[keys.ENERGY][graph_index])
        results = {
            keys.ENERGY: energy,
            keys.FREE_ENERGY: energy,
            keys.ENERGIES: out[keys.ENERGIES][atoms_slice].detach().cpu().double().numpy(),
            keys.FORCES: out[keys.FORCES][atoms_slice].detach().cpu().double().numpy(),
        }
        if with_stress:
            results[keys.STRESS] = _voigt(out[keys.STRESS][graph_index].detach().cpu().double().numpy())
        return results

    # ---------------------------------------------------------------- screening
    def calculate_batch(self, images: List[Atoms]) -> List[Dict[str, Union[float, np.ndarray]]]:
        """Evaluate many structures in one forward pass.

        Returns one results dict per structure (the same keys and units as ``results``; ``stress`` only
        for 3-D periodic cells). The structures keep their own calculators; this one's cache is
        untouched.
        """
        if len(images) == 0:
            return []
        for atoms in images:
            self._check_atoms(atoms)
        graph = AtomicGraph.collate([AtomicGraph.from_atoms(a, dtype=self.dtype, device=self.device)
                                     for a in images])
        i, j, shifts = batched_neighbor_list(graph.positions, self.cutoff, graph.batch, graph.cell,
                                             graph.pbc)
        graph.edge_index, graph.shifts = torch.stack([i, j]), shifts
        self._check_overlaps(graph)
        any_periodic = any(a.pbc.all() for a in images)
        out = self.model(graph, forces=True, stress=any_periodic)
        results, start = [], 0
        for b, atoms in enumerate(images):
            sl = slice(start, start + len(atoms))
            results.append(self._to_results(out, sl, b, bool(atoms.pbc.all())))
            start += len(atoms)
        return results
