"""The halo exchange: ghost atoms take their features from their owners, layer by layer.

In LAMMPS every rank owns some atoms and holds copies ("ghosts") of the atoms within a shell
around its domain: periodic images of its own atoms, or atoms other ranks own. Without an exchange,
an L-layer model must recompute every ghost's features from a shell L cutoffs deep, on every rank
(:mod:`.mliap`'s default). With it, each rank evaluates its own atoms only:

    before layer k (k >= 1):   h_g  <-  h_owner(g)       for every ghost g next to an owned atom

so one cutoff of ghosts suffices and no atom is evaluated twice. The exchange is linear in the
features, and its adjoint runs in the backward pass: the gradient that reaches a ghost's copy is sent
back to the owner and added to the owner's, so the pair forces are those of the total energy
(owners on the same rank are copied in memory; others travel by ``MPI_Alltoallv``, :mod:`.mpi`).

Ghosts are matched to owners by LAMMPS atom ID, which ML-IAP's ``data`` does not carry: the input
binds the LAMMPS instance once, with LAMMPS's ``python`` command (:data:`INPUT_LINES`), and
:func:`attach` keeps it. Every rank must run the same layers in the same order: the exchange is a
collective call.

Example (one rank; atom 2 is a periodic image of atom 0)
------------------------------------------------------
>>> import numpy as np, torch
>>> class OneRank:
...     size, rank = 1, 0
...     def sum(self, values): return values.copy()
...     def allgather_counts(self, n): return np.array([n])
...     def allgatherv(self, rows, counts=None): return rows.copy()
...     def alltoallv(self, rows, send, recv): return rows.copy()
>>> rank, row = Owners(OneRank()).locate(np.array([7, 8, 7]), n_owned=2)
>>> row.tolist()
[0, 1, 0]
>>> halo = Halo(rank, row, n_owned=2, comm=OneRank())
>>> halo.exchange(torch.tensor([[1.0], [2.0], [0.0]]))[0].flatten().tolist()
[1.0, 2.0, 1.0]
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

#: The lines a LAMMPS input needs (after ``pair_style``, before ``run``) to turn the exchange on.
INPUT_LINES = ('python eqgnn_attach input 1 SELF format p here '
               '"from ase_eqgnn.lammps.halo import attach as eqgnn_attach"',
               "python eqgnn_attach invoke")

_ATTACHED: Optional["LammpsAtoms"] = None


class LammpsAtoms:
    """What the exchange reads from LAMMPS: atom IDs of owned and ghost atoms, the communicator."""

    def __init__(self, lmp):
        from .mpi import Comm

        self.lmp = lmp
        self.comm = Comm(lmp)
        self.owners = Owners(self.comm)

    def check(self, data) -> None:
        """ValueError unless this LAMMPS instance hands over ``data`` (same force array: a Python
        script may open another instance after the one it bound) in ``units metal``."""
        forces = getattr(data, "f", None)
        if isinstance(forces, np.ndarray):  # (KOKKOS hands over device arrays: nothing to compare)
            ours = self.lmp.numpy.extract_atom("f")
            if ours is not None and ours.ctypes.data != forces.ctypes.data:
                raise ValueError("the LAMMPS instance the halo exchange was bound to is not the one "
                                 "running this pair style: put the python lines "
                                 "eqgnn-lammps-export prints in this input too")
        units = self.lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"the input uses 'units {units}'; ase_eqgnn models work in eV and Å: "
                             "use 'units metal'")

    def tags(self, n_total: int) -> np.ndarray:
        """The IDs of LAMMPS's first ``n_total`` atoms (owned, then ghosts), int64."""
        ids = self.lmp.numpy.extract_atom("id", nelem=n_total)
        if ids is None:
            raise ValueError("the halo exchange needs atom IDs: do not use 'atom_modify id no'")
        return np.asarray(ids, dtype=np.int64)


def attach(ptr) -> None:
    """Keep the LAMMPS instance that calls this (``python ... input 1 SELF``): switches
    :class:`~.mliap.EqGNNMLIAP` to the halo exchange."""
    from lammps import lammps

    global _ATTACHED
    _ATTACHED = LammpsAtoms(lammps(ptr=ptr))


def attached() -> Optional[LammpsAtoms]:
    """The LAMMPS atoms :func:`attach` bound, or None."""
    return _ATTACHED


@contextlib.contextmanager
def stop_together(comm) -> Iterator[None]:
    """Run the block on every rank; if it raises on some rank, raise on every rank: there its own
    error, elsewhere a RuntimeError that names it. LAMMPS stops on a Python error with a collective
    call, which a rank left waiting in an exchange would never reach, so wrap what comes before
    the first exchange. Collective; ``comm`` None (one process): the block runs as it is."""
    if comm is None:
        yield
        return
    failure: Optional[BaseException] = None
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - re-raised below, once every rank knows
        failure = err
    failed = np.zeros(comm.size)
    failed[comm.rank] = failure is not None
    failed = comm.sum(failed)
    if failure is not None:
        raise failure
    if failed.any():
        raise RuntimeError(f"LAMMPS rank {int(np.flatnonzero(failed)[0])} stopped the model; "
                           "its error is printed above")


class Owners:
    """Where each of LAMMPS's atoms is owned: the owner's rank and its row there.

    LAMMPS renumbers its atoms and changes the ghosts only when it re-neighbours (every few steps, on
    all ranks together), so the table is kept until some rank's atom IDs change: one
    ``MPI_Allreduce`` a step tells every rank whether to rebuild, and rebuilding gathers every rank's
    own atom IDs (``MPI_Allgatherv``). All ranks call :meth:`locate` together.
    """

    def __init__(self, comm):
        self.comm = comm
        self._key = None  # (n_owned, IDs of every atom) the table was built for

    def locate(self, tags: np.ndarray, n_owned: int) -> Tuple[np.ndarray, np.ndarray]:
        """(rank, row) of the owner of each atom of ``tags`` (IDs; the first ``n_owned`` are this
        rank's own atoms, then ghosts)."""
        tags = np.asarray(tags, dtype=np.int64)
        key = self._key
        changed = key is None or key[0] != n_owned or not np.array_equal(key[1], tags)
        if self.comm.sum(np.array([float(changed)]))[0] > 0:  # all rebuild, or none
            counts = np.asarray(self.comm.allgather_counts(n_owned), dtype=np.int64)
            every_owned = self.comm.allgatherv(tags[:n_owned], counts)
            owner_rank = np.repeat(np.arange(self.comm.size), counts)
            owner_row = np.arange(every_owned.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
            order = np.argsort(every_owned, kind="stable")
            at = np.minimum(np.searchsorted(every_owned[order], tags), max(order.shape[0] - 1, 0))
            if tags.size and not np.array_equal(every_owned[order][at], tags):
                raise ValueError("a ghost atom's ID is owned by no rank: atom IDs must be unique")
            self._key = (n_owned, tags.copy())
            self._found = owner_rank[order[at]], owner_row[order[at]]
        return self._found


class Halo:
    """Which rows of a rank's node list are ghosts, and where their owners are.

    Rows ``0..n_owned-1`` are this rank's own atoms, the rest ghosts; ``rank``/``row`` [n] say where
    each row's atom is owned (:class:`Owners`). Building it is collective (each rank learns which of
    its rows the others need).
    """

    def __init__(self, rank: np.ndarray, row: np.ndarray, n_owned: int, comm):
        self.comm = comm
        self.n_rows, self.n_owned = len(rank), int(n_owned)
        rank, row = np.asarray(rank[self.n_owned:]), np.asarray(row[self.n_owned:])
        mine = rank == comm.rank
        self.copy_rows = _long(self.n_owned + np.flatnonzero(mine))
        self.copy_from = _long(row[mine])
        remote = np.flatnonzero(~mine)
        remote = remote[np.argsort(rank[remote], kind="stable")]  # grouped by owner rank
        self.recv_rows = _long(self.n_owned + remote)
        self.recv_counts = np.bincount(rank[remote], minlength=comm.size)
        # tell each owner which of its rows we need; learn which of ours the others need
        self.send_counts = comm.alltoallv(self.recv_counts.astype(np.int64),
                                          np.ones(comm.size, np.int64), np.ones(comm.size, np.int64))
        self.send_rows = _long(comm.alltoallv(row[remote], self.recv_counts, self.send_counts))
        self._open = []  # (width, dtype) of the exchanges whose backward (fold) has not run yet

    def to(self, device: torch.device) -> "Halo":
        for name in ("copy_rows", "copy_from", "recv_rows", "send_rows"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, D] with every ghost row replaced by its owner's row."""
        self._open.append((x.shape[1], x.dtype))
        out = x.clone()
        out[self.copy_rows] = x.index_select(0, self.copy_from)
        if self.comm.size > 1:
            out[self.recv_rows] = self._swap(x.index_select(0, self.send_rows),
                                             self.send_counts, self.recv_counts, x)
        return out

    def fold(self, g: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`fill`: each ghost row's gradient added to its owner's row."""
        self._open.pop()
        return self.add_to_owners(g)

    def add_to_owners(self, g: torch.Tensor) -> torch.Tensor:
        """g [n, D] with each ghost row added to its owner's row and set to zero (e.g. forces on
        ghosts, where LAMMPS cannot take them back itself). Collective."""
        out = g.clone()
        out[self.n_owned:] = 0
        out.index_add_(0, self.copy_from, g.index_select(0, self.copy_rows))
        if self.comm.size > 1:
            back = self._swap(g.index_select(0, self.recv_rows), self.recv_counts, self.send_counts, g)
            out.index_add_(0, self.send_rows, back)
        return out

    def finish(self) -> None:
        """Run the folds still owed, with zero gradients, last exchange first. Where autograd did not
        need this rank's exchanges (no pairs), the other ranks still wait for their messages."""
        while self._open:
            width, dtype = self._open[-1]
            self.fold(torch.zeros(self.n_rows, width, dtype=dtype, device=self.copy_rows.device))

    def _swap(self, rows, send_counts, recv_counts, like):
        received = self.comm.alltoallv(rows.detach().cpu().numpy(), send_counts, recv_counts)
        return torch.from_numpy(received).to(device=like.device, dtype=like.dtype)

    def exchange(self, *xs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``xs`` (each [n, ...]) with ghost rows from their owners, differentiably (one message)."""
        return _Exchange.apply(self, *xs)


class _Exchange(torch.autograd.Function):
    """:meth:`Halo.fill` of several tensors in one message; backward: :meth:`Halo.fold`."""

    @staticmethod
    def forward(ctx, halo: Halo, *xs):
        ctx.halo, ctx.shapes = halo, [x.shape for x in xs]
        flat = halo.fill(torch.cat([_rows(x) for x in xs], dim=1))
        return tuple(part.reshape(shape) for part, shape in zip(_split(flat, ctx.shapes), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads):
        # (absent gradients arrive as zeros: autograd materialises them by default)
        flat = ctx.halo.fold(torch.cat([_rows(g) for g in grads], dim=1))
        return (None,) + tuple(p.reshape(s) for p, s in zip(_split(flat, ctx.shapes), ctx.shapes))


def _long(indices) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(indices), dtype=torch.long)


def _width(shape) -> int:
    return int(np.prod(shape[1:], dtype=np.int64))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, ...] as [n, D] (also for n = 0)."""
    return x.reshape(x.shape[0], _width(x.shape))


def _split(flat: torch.Tensor, shapes):
    return flat.split([_width(shape) for shape in shapes], dim=1)


__all__ = ["INPUT_LINES", "Halo", "LammpsAtoms", "Owners", "attach", "attached",
           "stop_together"]
