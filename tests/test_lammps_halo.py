"""EqGNNMLIAP with the halo exchange, without LAMMPS: each "rank" evaluates only the atoms it owns,
ghosts take their owners' features between layers, and the ranks' energies, folded pair forces and
virials add up to EqGNNCalculator's (float64, 1e-10).

A rank's fake ``data`` is what ``pair_style mliap unified FILE 0`` hands over: its own atoms first,
then ghosts (periodic images and other ranks' atoms within one cutoff + 0.5 Å of its atoms), pairs
centred on its own atoms only. Two ranks run in two threads with an in-process communicator that
does what the MPI collectives do, so the messages (and the backward pass's) are exercised too.
"""

import itertools
import threading

import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_eqgnn.lammps import EqGNNMLIAP
from ase_eqgnn.lammps import halo as halo_module
from ase_eqgnn.models import MODEL_NAMES
from test_lammps_mliap import FakeData, open_system, reference, small_model

SKIN = 0.5


class Domain(FakeData):
    """The ML-IAP ``data`` of one rank (owned atoms ``owned`` of ``atoms``), with atom IDs."""

    def __init__(self, atoms, element_types, cutoff, owned):
        n = len(atoms)
        cell = atoms.cell[:]
        shifts = [np.zeros(3)]
        if atoms.pbc.any():
            reps = [range(-1, 2) if p else range(1) for p in atoms.pbc]
            shifts = [np.array(s) for s in itertools.product(*reps)]
        own = np.flatnonzero(owned)
        candidates = [(a, s) for s in shifts for a in range(n) if s.any() or not owned[a]]
        pos = np.array([atoms.positions[a] + s @ cell for a, s in candidates]).reshape(-1, 3)
        near = np.linalg.norm(pos[:, None] - atoms.positions[own][None], axis=2).min(axis=1) \
            if len(own) else np.full(len(pos), np.inf)
        ghosts = [c for c, d in zip(candidates, near) if d < cutoff + SKIN]
        positions = np.vstack([atoms.positions[own]] + [atoms.positions[a] + s @ cell
                                                         for a, s in ghosts]).reshape(-1, 3)
        d = positions[None, :, :] - positions[:len(own), None, :]  # x_j - x_i
        r = np.linalg.norm(d, axis=2)
        pair_i, pair_j = np.nonzero((r < cutoff) & (r > 0))
        owner = np.concatenate([own, [a for a, _ in ghosts]]).astype(int)
        self.set_arrays(atoms, element_types, owner, len(own), np.arange(len(own)), pair_i, pair_j,
                        d[pair_i, pair_j])
        self.tags = self.owner + 1


class ThreadComm:
    """The collectives of :class:`ase_eqgnn.lammps.mpi.Comm` between threads of one process."""

    def __init__(self, rank, size, board, barrier):
        self.rank, self.size, self.board, self.barrier = rank, size, board, barrier

    def _everyone(self, item):
        self.board[self.rank] = item
        self.barrier.wait()
        items = list(self.board)
        self.barrier.wait()
        return items

    def sum(self, values):
        return np.sum(self._everyone(np.asarray(values)), axis=0)

    def allgather_counts(self, count):
        return np.array(self._everyone(count))

    def allgatherv(self, rows, counts=None):
        return np.concatenate(self._everyone(np.asarray(rows)))

    def alltoallv(self, rows, send_counts, recv_counts):
        parts = np.split(np.asarray(rows), np.cumsum(send_counts)[:-1])
        received = [parts_of[self.rank] for parts_of in self._everyone(parts)]
        assert [len(p) for p in received] == list(recv_counts)
        return np.concatenate(received)


class Source:
    """What :func:`ase_eqgnn.lammps.halo.attach` keeps: atom IDs and the communicator."""

    def __init__(self, domain, comm):
        self.domain, self.comm = domain, comm
        self.owners = halo_module.Owners(comm)

    def check(self, data):
        assert data is self.domain

    def tags(self, n_total):
        return self.domain.tags[:n_total]


def run_ranks(unified, atoms, owner_rank, monkeypatch):
    """Every rank's Domain after compute_forces, ranks in threads sharing one ThreadComm board."""
    size = int(owner_rank.max()) + 1
    domains = [Domain(atoms, unified.element_types, 2 * unified.rcutfac, owner_rank == r)
               for r in range(size)]
    board, barrier = [None] * size, threading.Barrier(size, timeout=60)
    local = threading.local()
    monkeypatch.setattr(halo_module, "attached", lambda: local.source)
    errors = []

    def rank_main(r):
        local.source = Source(domains[r], ThreadComm(r, size, board, barrier))
        try:
            unified.compute_forces(domains[r])
        except BaseException as err:  # (reported below; a rank left waiting times out at 60 s)
            errors.append(err)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return domains


def totals(domains, n_atoms):
    forces = np.zeros((n_atoms, 3))
    for d in domains:
        np.add.at(forces, d.owner, d.f)
    energy = sum(d.energy for d in domains)
    eatoms = np.zeros(n_atoms)
    for d in domains:
        eatoms[d.owner[:d.nlocal]] = d.eatoms
    return energy, eatoms, forces, sum(d.virial for d in domains)


def periodic_cuni():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))  # 7.2 Å: one image shell
    atoms.symbols[::3] = "Ni"
    atoms.rattle(0.12, seed=8)
    return atoms


def halves(atoms):
    """Rank 0 owns the atoms with x below the middle of the cell (or of the atoms), rank 1 the rest."""
    x = atoms.get_scaled_positions(wrap=False)[:, 0] if atoms.pbc.any() else atoms.positions[:, 0]
    return (x >= np.median(x)).astype(int)


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("system", [periodic_cuni, open_system])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_ranks_with_halo_equal_calculator(name, system, ranks, monkeypatch):
    model = small_model(name)
    atoms = system()
    owner_rank = halves(atoms) if ranks == 2 else np.zeros(len(atoms), dtype=int)
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    domains = run_ranks(unified, atoms, owner_rank, monkeypatch)
    if atoms.pbc.any() or ranks > 1:
        assert all(d.ntotal > d.nlocal for d in domains)  # every rank has ghosts to fill
    energy, eatoms, forces, virial = totals(domains, len(atoms))
    ref = reference(model, atoms)
    assert abs(energy - ref["energy"]) < 1e-10
    np.testing.assert_allclose(eatoms, ref["energies"], rtol=0, atol=1e-10)
    assert np.abs(ref["forces"]).max() > 1e-4
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10)
    if "virial" in ref:
        np.testing.assert_allclose(virial, ref["virial"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 3])
def test_egnn_coordinate_updates_and_depths(layers, monkeypatch):
    model = small_model("egnn", coord_update=True, layers=layers)
    atoms = periodic_cuni()
    domains = run_ranks(EqGNNMLIAP(model, keep_freed_memory=False), atoms, halves(atoms), monkeypatch)
    energy, _, forces, _ = totals(domains, len(atoms))
    ref = reference(model, atoms)
    assert abs(energy - ref["energy"]) < 1e-10
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rank_without_atoms_still_exchanges(name, monkeypatch):
    """A rank that owns nothing must still take part in every collective call (no deadlock)."""
    model = small_model(name)
    atoms = open_system()
    owner_rank = np.array([0, 0] + [2] * (len(atoms) - 2))  # rank 1 owns no atom
    domains = run_ranks(EqGNNMLIAP(model, keep_freed_memory=False), atoms, owner_rank, monkeypatch)
    assert domains[1].nlocal == 0
    energy, _, forces, _ = totals(domains, len(atoms))
    ref = reference(model, atoms)
    assert abs(energy - ref["energy"]) < 1e-10
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10)


def test_missing_ghost_lists_without_halo_are_refused():
    """``pair_style mliap unified FILE 0`` without the exchange would give wrong forces: refused."""
    model = small_model("painn")
    atoms = periodic_cuni()
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    domain = Domain(atoms, unified.element_types, 3.2, np.ones(len(atoms), bool))
    with pytest.raises(ValueError, match="no neighbour lists"):
        unified.compute_forces(domain)


class FakeLammps:
    """What LammpsAtoms reads of a ``lammps.lammps`` instance: one rank, units, force array."""

    def __init__(self, forces, units="metal"):
        self.units, self.numpy = units, type("Numpy", (), {"extract_atom": lambda _, name: forces})()

    def extract_setting(self, name):
        return {"world_size": 1, "world_rank": 0}[name]

    def extract_global(self, name):
        return {"units": self.units}[name]


def test_bound_instance_is_checked():
    """Another LAMMPS instance than the one bound, or units other than metal, are refused."""
    data = Domain(periodic_cuni(), ["Ni", "Cu"], 3.2, np.ones(32, bool))
    halo_module.LammpsAtoms(FakeLammps(data.f)).check(data)
    with pytest.raises(ValueError, match="not the one running this pair style"):
        halo_module.LammpsAtoms(FakeLammps(np.zeros_like(data.f))).check(data)
    with pytest.raises(ValueError, match="units metal"):
        halo_module.LammpsAtoms(FakeLammps(data.f, units="real")).check(data)


def test_owners_are_rebuilt_on_every_rank_when_any_rank_changes():
    """The owner table is kept while no rank's atoms change, and rebuilt on all ranks together when
    one rank's change (else the ranks' collective calls would no longer match)."""
    board, barrier = [None, None], threading.Barrier(2, timeout=60)
    steps = [  # (rank 0's IDs, rank 1's IDs): own atoms first, then ghosts
        (([1, 2, 3, 4], 2), ([3, 4, 1], 2)),
        (([1, 2, 3, 4], 2), ([3, 4, 1], 2)),  # unchanged: kept
        (([2, 1, 4, 3], 2), ([3, 4, 1], 2)),  # rank 0 re-sorted its atoms: both rebuild
    ]
    found, gathers = [[], []], [0, 0]

    def rank_main(r):
        comm = ThreadComm(r, 2, board, barrier)
        original = comm.allgatherv

        def counting(rows, counts=None):
            gathers[r] += 1
            return original(rows, counts)

        comm.allgatherv = counting
        owners = halo_module.Owners(comm)
        for step in steps:
            tags, n_owned = step[r]
            found[r].append(tuple(a.tolist() for a in owners.locate(np.array(tags), n_owned)))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert gathers == [2, 2]
    assert found[0][0] == found[0][1] == ([0, 0, 1, 1], [0, 1, 0, 1])
    assert found[1][2] == ([1, 1, 0], [0, 1, 1])  # atom 1 is now rank 0's row 1


@pytest.mark.parametrize("name", ["painn", "tp"])
def test_atoms_too_close_on_one_rank_stop_every_rank(name, monkeypatch):
    """Only rank 1 sees the overlapping pair; both ranks stop (neither waits in an exchange)."""
    atoms = periodic_cuni()
    owner_rank = halves(atoms)
    a, b = np.flatnonzero(owner_rank == 1)[:2]
    atoms.positions[b] = atoms.positions[a] + [0.05, 0.0, 0.0]
    with pytest.raises(AssertionError) as failed:
        run_ranks(EqGNNMLIAP(small_model(name), keep_freed_memory=False), atoms, owner_rank,
                  monkeypatch)
    message = str(failed.value)
    assert "AtomsTooCloseError" in message and "rank 1 stopped the model" in message
    assert "BrokenBarrierError" not in message


def test_exchange_is_the_adjoint_of_its_backward():
    """<fill(x), g> = <x, fold(g)> for random x, g: the backward pass is fill's exact transpose."""
    comm = ThreadComm(0, 1, [None], threading.Barrier(1))
    tags = np.array([5, 2, 9, 2, 5, 5, 9])
    halo = halo_module.Halo(*halo_module.Owners(comm).locate(tags, 3), 3, comm)
    x, g = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    filled = halo.fill(x)
    np.testing.assert_array_equal(filled[3:].numpy(), x[[1, 0, 0, 2]].numpy())
    lhs = float((filled * g).sum())
    rhs = float((x * halo.fold(g)).sum())
    assert abs(lhs - rhs) < 1e-12
