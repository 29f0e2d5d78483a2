"""`EqGNNCalculator`: an equivariant GNN potential behind ASE's Calculator protocol.

Thin by design: ``ase.Atoms`` -> :class:`~ase_eqgnn.graph.AtomicGraph` (neighbour list reused across
calls with a Verlet skin) -> model -> ``results`` in ASE's units (eV, eV/Å, eV/Å^3).

Positions are read in float64 and moved near the origin before they are cast to the model's dtype:
each atom is wrapped into the cell along periodic directions, and each piece of the structure that
no pair links to the rest is centred along the others (:meth:`AtomicGraph.near_origin
<ase_eqgnn.graph.AtomicGraph.near_origin>`; the offsets stay fixed between neighbour-list rebuilds,
so the list is still reused). A float32 result therefore does not depend on where the system sits.

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

import contextlib
import copy
import os
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from . import heap, keys
from .checkpoint import load_model
from .compiled import CompiledEnergies
from .cuda_graphs import CapturedPotential
from .domain import DEFAULT_FRACTION
from .dtypes import resolve_dtype
from .graph import AtomicGraph
from .models.neighborhood import LAYOUTS
from .models.potential import Potential
from .neighbors import VerletList
from .neighbors.frame import centring_translations, lattice_frame, wrap_counts
from .neighbors.inputs import as_cells, as_positions, check_length
from .structure_checks import StructureChecks, check_fraction, check_mode

# cuda_graphs="auto" captures lists of at most this many pairs: above it the GPU's arithmetic, not
# launching kernels, sets the time, and the graph's unpruned skin pairs would only add work.
_GRAPH_MAX_PAIRS = 100_000
# A capture costs about three eager calls. "auto" captures at a list's second call, or at its sixth
# when the previous list was rebuilt within six calls (fast atoms, small skin), so that short-lived
# lists are not captured for a replay or two.
_CAPTURE_AT_CALL, _CAPTURE_AT_CALL_AFTER_SHORT_LIST = 2, 6
_F64 = torch.float64


def _resolve_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or a torch device, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return device


def _check_threads(num_threads) -> Optional[int]:
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
            or num_threads < 1:
        raise ValueError(f"num_threads must be None or a positive integer, got {num_threads!r}")
    return int(num_threads)


@contextlib.contextmanager
def _torch_threads(num_threads: Optional[int]):
    """torch's intra-op threads set to ``num_threads`` inside the block, the caller's afterwards."""
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EqGNNCalculator(Calculator):
    """ASE calculator for ase_eqgnn potentials.

    Parameters
    ----------
    model : path of a checkpoint written by :func:`ase_eqgnn.save_model` (or by ``eqgnn-train``), or a
        :class:`~ase_eqgnn.models.potential.Potential` (copied, so the caller's model is untouched).
    device : "cpu", "cuda" or a torch device.
    dtype : "float32" (default; MD and screening) or "float64" (tight relaxations, finite differences).
    skin : Verlet skin in Å (finite, >= 0): the neighbour list is built with ``cutoff + skin`` and
        rebuilt only when an atom moved more than ``skin / 2``, or the cell, pbc or atoms changed.
    neighbor_backend : "auto" (vesin-torch for single structures when installed, else our torch cell
        list), "torch" or "vesin". Structures vesin cannot take safely (no atoms, a cell grid past
        its cap) use the torch cell list.
    min_distance : two atoms closer than this (Å; finite, >= 0; 0 disables) raise
        :class:`~ase_eqgnn.errors.AtomsTooCloseError` (overlapping atoms give meaningless energies
        rather than a clear failure otherwise).
    domain_check : "warn" (default), "raise" or "off": what to do when a pair of atoms is closer
        than ``domain_fraction`` x the shortest distance of that element pair in the model's training
        data (``model.domain``; models without that record are not checked). "warn" warns once per
        calculator; "raise" raises :class:`~ase_eqgnn.errors.OutOfDomainError`.
    domain_fraction : in (0, 1], default 0.75 (:data:`ase_eqgnn.domain.DEFAULT_FRACTION`).
    num_threads : torch intra-op threads during this calculator's calls (None: leave torch's
        setting). The caller's setting is restored after each call, also when it fails (torch's
        setting is process-wide, so threads of the host that run torch at the same time see it
        too). On a shared machine 1 is often fastest: with a thread per busy core, torch's threads
        wait for each other.
    cuda_graphs : on a GPU, replay the model as a CUDA graph captured once per neighbour list
        (:class:`~ase_eqgnn.cuda_graphs.CapturedPotential`): "auto" for lists of up to 100,000
        pairs, from a list's second call on (sixth after a short-lived list); True for every list
        from its first call; False (default) never. Small systems are bound by kernel launches,
        which a replay removes. Experimental: off by default until its CUDA tests
        (``tests/test_cuda.py``) have run on a GPU; on the CPU its fixed-list evaluation is tested.
    keep_freed_memory : on a CPU device, call :func:`ase_eqgnn.heap.keep_freed_memory` (default
        False): glibc then keeps the memory torch frees for the next call instead of returning it to
        the OS, which otherwise makes every call fault in its temporaries afresh (15-60 % of a call
        on 96-864 atoms here). It changes the whole process (its resident memory stays at its peak),
        so a library leaves it to the program: the ``eqgnn-*`` commands turn it on. Without it,
        glibc's ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_=-1`` environment variables, set
        before Python starts, have the same effect.
    compile : evaluate the energy pass (and its gradient) compiled by ``torch.compile``
        (:class:`~ase_eqgnn.compiled.CompiledEnergies`; default False). Pays off in long MD of small
        molecules and ~100-atom systems: on 2 CPU cores PaiNN calls took 0.55-0.8x and ``tp`` calls
        0.23-0.5x the eager time there, and nothing was gained at 864 Cu atoms. The first call
        compiles (tens of seconds; cached on disk for later processes). Needs a C++ compiler on the
        CPU: if compiling fails, the calculator warns and evaluates eagerly. ``calculate_batch``
        stays eager.
    layout : "auto" (each model family's fast neighbour layout, default) or "reference" (the plain
        edge list with index_select and scatter-sums: the readable path, for debugging; the same
        numbers, slower).

    ``implemented_properties``: energy, free_energy, energies (per atom), forces, and stress when the
    cell is periodic in all three directions (otherwise asking for stress raises ASE's
    ``PropertyNotImplementedError``). A structure without atoms has energy 0, forces of shape (0, 3)
    and, when periodic, zero stress.
    """

    implemented_properties = [keys.ENERGY, keys.FREE_ENERGY, keys.ENERGIES, keys.FORCES, keys.STRESS]

    def __init__(self, model: Union[str, os.PathLike, Potential], device="cpu", dtype="float32",
                 skin: float = 0.5, neighbor_backend: str = "auto", min_distance: float = 0.1,
                 domain_check: str = "warn", domain_fraction: float = DEFAULT_FRACTION,
                 num_threads: Optional[int] = None, cuda_graphs: Union[bool, str] = False,
                 keep_freed_memory: bool = False, compile: bool = False, layout: str = "auto",
                 **kwargs):
        super().__init__(**kwargs)
        # Every option is checked before anything is loaded or changed.
        min_distance = check_length(min_distance, "min_distance")
        skin = check_length(skin, "skin")
        domain_check, domain_fraction = check_mode(domain_check), check_fraction(domain_fraction)
        self.num_threads = _check_threads(num_threads)
        self.device = _resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}")
        if cuda_graphs is True and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if compile and cuda_graphs and self.device.type == "cuda":
            raise ValueError("compile and cuda_graphs cannot be combined: choose one")
        if not isinstance(keep_freed_memory, bool):
            raise ValueError(f"keep_freed_memory must be True or False, got {keep_freed_memory!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
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
        self.neighbors = VerletList(self.cutoff, skin=skin, backend=neighbor_backend)
        self.checks = StructureChecks(min_distance, getattr(self.model, "domain", None),
                                      domain_check, domain_fraction, self.cutoff)
        self._species = set(int(z) for z in self.model.species)
        # float64 offsets fixed between list rebuilds: whole lattice vectors (periodic directions)
        # and the centring of connected pieces (the others); see the module docstring.
        self._wrap_offset: Optional[torch.Tensor] = None
        self._centring: Optional[torch.Tensor] = None
        self.cuda_graphs = cuda_graphs if self.device.type == "cuda" else False
        self._captured: Optional[CapturedPotential] = None
        self._calls_on_list = 0  # calls since the neighbour list was last rebuilt
        self._previous_list_calls = _CAPTURE_AT_CALL_AFTER_SHORT_LIST  # the list before it
        self._energy_fn = CompiledEnergies(self.model) if compile else None
        if keep_freed_memory and self.device.type == "cpu":
            heap.keep_freed_memory()

    # ---------------------------------------------------------------- options
    @property
    def min_distance(self) -> float:
        """Atoms closer than this (Å) raise AtomsTooCloseError; settable."""
        return self.checks.min_distance

    @min_distance.setter
    def min_distance(self, value: float) -> None:
        self.checks.min_distance = check_length(value, "min_distance")

    @property
    def domain_check(self) -> str:
        """"warn", "raise" or "off" (see the class docstring); settable."""
        return self.checks.mode

    @domain_check.setter
    def domain_check(self, value: str) -> None:
        self.checks.mode = check_mode(value)

    @property
    def domain_fraction(self) -> float:
        """Fraction of the training data's shortest distance below which a pair is flagged."""
        return self.checks.fraction

    @domain_fraction.setter
    def domain_fraction(self, value: float) -> None:
        self.checks.fraction = check_fraction(value)

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
        as_positions(atoms.get_positions())  # finite, within reach of float64
        cell, pbc = as_cells(np.asarray(atoms.cell[:]), atoms.get_pbc(), 1, "cpu")
        if pbc.any():
            lattice_frame(cell[0], pbc[0])  # a singular periodic cell is refused here

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
        if len(atoms) == 0:
            self.results = _empty_results(periodic3d)
            return
        with _torch_threads(self.num_threads):
            graph, rebuilt = self._graph(atoms)
            self.checks(graph, rebuilt, self.neighbors.skin)
            out = self._replay(graph, rebuilt, periodic3d) if self.cuda_graphs else None
            if out is None:
                if self.cuda_graphs:  # the eager model takes the pairs within the cutoff only
                    i, j, shifts = self.neighbors.within_cutoff(graph.positions)
                    graph.edge_index, graph.shifts = torch.stack([i, j]), shifts
                out = self._evaluate(graph, periodic3d)
            self.results = self._to_results(out, slice(None), 0, periodic3d)

    def _graph(self, atoms: Atoms):
        """The model's graph of ``atoms`` (positions near the origin, in the model's dtype) with
        its pairs from the Verlet list, and whether the list was rebuilt."""
        dev = self.device
        pos = torch.as_tensor(atoms.get_positions(), dtype=_F64, device=dev)
        cell = torch.as_tensor(np.asarray(atoms.cell[:]), dtype=_F64, device=dev)
        pbc_np = atoms.get_pbc()
        pbc = torch.as_tensor(pbc_np, device=dev)
        numbers = torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long, device=dev)
        # Wrapped with the offsets of the last rebuild, so that the list sees continuous motion;
        # new offsets (and a rebuild) when the list needs rebuilding anyway.
        offset = self._wrap_offset
        if offset is None or offset.shape != pos.shape or self.neighbors.needs_rebuild(
                pos - offset, cell, pbc, numbers):
            wrap = wrap_counts(pos, cell.cpu().numpy()[None], pbc_np[None])
            self._wrap_offset = offset = wrap.to(_F64) @ cell
            self.neighbors.reset()
        placed = pos - offset
        builds = self.neighbors.builds
        # A CUDA graph evaluates the list as built (fixed shapes); the eager model its pairs within
        # the cutoff.
        i, j, shifts = self.neighbors(placed, cell, pbc, numbers, prune=not self.cuda_graphs)
        rebuilt = self.neighbors.builds != builds
        if rebuilt:
            self._centring = None if pbc_np.all() else centring_translations(
                placed, torch.stack(self.neighbors.built_pairs[:2]), cell.cpu().numpy()[None],
                pbc_np[None])
        if self._centring is not None:
            placed = placed - self._centring
        graph = AtomicGraph(positions=placed.to(self.dtype), numbers=numbers,
                            cell=cell.to(self.dtype)[None], pbc=pbc[None],
                            batch=torch.zeros(len(atoms), dtype=torch.long, device=dev),
                            edge_index=torch.stack([i, j]), shifts=shifts)
        return graph, rebuilt

    def _evaluate(self, graph: AtomicGraph, stress: bool) -> Dict[str, torch.Tensor]:
        """The model's results, through its compiled energy pass where ``compile=True``."""
        if self._energy_fn is None:
            return self.model(graph, forces=True, stress=stress, layout=self.layout)
        try:
            return self.model(graph, forces=True, stress=stress, energy_fn=self._energy_fn,
                              layout=self.layout)
        except Exception as err:  # no C++ compiler, an unsupported operation...: eager is still right
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            warnings.warn(f"torch.compile failed, evaluating eagerly from now on "
                          f"({type(err).__name__}: {first_line})")
            self._energy_fn = None
            return self.model(graph, forces=True, stress=stress, layout=self.layout)

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
                self._captured = CapturedPotential(self.model, graph, stress, layout=self.layout)
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
            stress = out[keys.STRESS][graph_index].detach().cpu().double().numpy()
            results[keys.STRESS] = full_3x3_to_voigt_6_stress(stress)
        return results

    # ---------------------------------------------------------------- screening
    def calculate_batch(self, images: List[Atoms]) -> List[Dict[str, Union[float, np.ndarray]]]:
        """Evaluate many structures in one forward pass.

        Returns one results dict per structure (the same keys and units as ``results``; ``stress`` only
        for 3-D periodic cells; a structure without atoms gets energy 0 and empty arrays). The
        structures keep their own calculators; this one's cache is untouched. The overlap and domain
        checks apply as in single calls.
        """
        images = list(images)
        for atoms in images:
            self._check_atoms(atoms)
        filled = [k for k, atoms in enumerate(images) if len(atoms)]
        results: List[Dict] = [_empty_results(bool(a.pbc.all())) for a in images]
        if not filled:
            return results
        with _torch_threads(self.num_threads):
            graph = AtomicGraph.collate([AtomicGraph.from_atoms(images[k], dtype=_F64,
                                                                device=self.device) for k in filled])
            graph = graph.with_neighbors(self.cutoff).near_origin().to(dtype=self.dtype)
            first = np.cumsum([0] + [len(images[k]) for k in filled])

            def describe(i: int, j: int) -> str:
                b = int(np.searchsorted(first, i, side="right")) - 1
                zi, zj = (chemical_symbols[int(graph.numbers[a])] for a in (i, j))
                return (f"atoms {i - first[b]} ({zi}) and {j - first[b]} ({zj}) of structure "
                        f"{filled[b]}")

            self.checks(graph, rebuilt=None, describe=describe)
            any_periodic = any(images[k].pbc.all() for k in filled)
            out = self.model(graph, forces=True, stress=any_periodic, layout=self.layout)
        for b, k in enumerate(filled):
            results[k] = self._to_results(out, slice(first[b], first[b + 1]), b,
                                          bool(images[k].pbc.all()))
        return results


def _empty_results(periodic3d: bool) -> Dict[str, Union[float, np.ndarray]]:
    """The results of a structure without atoms: no energy, no forces, no stress."""
    results = {keys.ENERGY: 0.0, keys.FREE_ENERGY: 0.0, keys.ENERGIES: np.zeros(0),
               keys.FORCES: np.zeros((0, 3))}
    if periodic3d:
        results[keys.STRESS] = np.zeros(6)
    return results


__all__ = ["EqGNNCalculator"]
