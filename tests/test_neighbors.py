"""The torch cell list against ASE's neighbour list, the Verlet skin, the batch form, bad input."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ase_eqgnn.neighbors import VerletList, batched_neighbor_list, cell_list, neighbor_list


def as_set(i, j, S):
    i, j, S = (np.asarray(x.cpu()) if isinstance(x, torch.Tensor) else np.asarray(x) for x in (i, j, S))
    return set(zip(i.tolist(), j.tolist(), map(tuple, S.reshape(-1, 3).tolist())))


def ours(atoms, cutoff, dtype=torch.float64):
    return neighbor_list(torch.tensor(atoms.positions, dtype=dtype), cutoff,
                         torch.tensor(atoms.cell[:], dtype=dtype), atoms.pbc)


def assert_same_as_ase(atoms, cutoff):
    i, j, S = ours(atoms, cutoff)
    got = as_set(i, j, S)
    assert len(got) == len(i), "duplicate pairs"
    expected = as_set(*ase_neighbor_list("ijS", atoms, cutoff))
    assert got == expected, (f"{len(expected - got)} missing, {len(got - expected)} extra; "
                             f"e.g. {sorted(expected - got)[:3]} / {sorted(got - expected)[:3]}")
    # vectors follow the documented convention and are shorter than the cutoff
    if len(i):
        vec = atoms.positions[j] - atoms.positions[i] + S.numpy() @ atoms.cell[:]
        assert np.linalg.norm(vec, axis=1).max() < cutoff


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 14),
    seed=st.integers(0, 2**31 - 1),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(0.3, 6.0),
    skew=st.floats(0.0, 2.5),
    size=st.floats(0.8, 8.0),
)
@example(n=8, seed=0, pbc=(True, True, True), cutoff=6.0, skew=0.0, size=0.875)  # found by CI: refused
def test_random_cells_match_ase(n, seed, pbc, cutoff, skew, size):
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(0.5, 1.5, 3) * size) + np.triu(rng.normal(size=(3, 3)), 1) * skew * size
    cell = cell[rng.permutation(3)] if rng.random() < 0.3 else cell
    # atoms inside and outside the cell (fractional coordinates in [-0.7, 1.7))
    pos = rng.uniform(-0.7, 1.7, size=(n, 3)) @ cell
    atoms = Atoms(numbers=np.ones(n, int), positions=pos, cell=cell, pbc=pbc)
    bound = cell_list._MAX_NEIGHBOURS_PER_ATOM * n
    n_pairs = len(ase_neighbor_list("i", atoms, cutoff))
    if n_pairs <= bound / 4:
        assert_same_as_ase(atoms, cutoff)
        return
    # a cell far smaller than the cutoff: the density guard may refuse it near its bound and must
    # refuse it above (e.g. 8 atoms in 0.32 Å^3 with a 6 Å cutoff: ~23,000 neighbours per atom)
    try:
        assert_same_as_ase(atoms, cutoff)
    except ValueError as err:
        assert "neighbours per atom" in str(err)
    else:
        assert n_pairs <= bound, "denser than the guard's bound, yet not refused"


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, True),
                                 (False, False, False)])
def test_cell_much_smaller_than_cutoff(pbc):
    # several images of each atom, including an atom's own images, are neighbours
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.pbc = pbc
    assert_same_as_ase(atoms, 7.5)
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.3, 0.2, 0.1]], cell=[[1.0, 0, 0], [0.9, 0.5, 0],
                                                                        [0.4, 0.3, 0.7]], pbc=pbc)
    assert_same_as_ase(atoms, 3.3)


def test_strongly_skewed_cell():
    cell = np.array([[4.0, 0, 0], [3.9, 0.6, 0], [3.8, 0.5, 0.7]])
    rng = np.random.default_rng(1)
    atoms = Atoms("H20", positions=rng.uniform(0, 1, (20, 3)) @ cell, cell=cell, pbc=True)
    assert_same_as_ase(atoms, 2.5)


def test_zero_and_one_atom():
    assert_same_as_ase(Atoms(cell=np.eye(3) * 3, pbc=True), 2.0)
    assert_same_as_ase(Atoms("H", positions=[[0.2, 0.1, 0]], cell=np.eye(3) * 2.5, pbc=True), 5.0)
    assert_same_as_ase(Atoms("H", positions=[[0.2, 0.1, 0]]), 5.0)


def test_molecule_without_cell_and_zero_cell_rows():
    atoms = molecule("C6H6")
    assert_same_as_ase(atoms, 2.0)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    slab.cell[2] = 0.0  # no third lattice vector: periodic in-plane only
    slab.pbc = (True, True, False)
    assert_same_as_ase(slab, 4.0)


def test_planar_and_collinear_atoms():
    line = Atoms("H8", positions=[[0.7 * k, 0, 0] for k in range(8)])
    assert_same_as_ase(line, 1.5)
    plane = Atoms("H9", positions=[[k % 3, k // 3, 0.0] for k in range(9)])
    assert_same_as_ase(plane, 1.5)


def test_large_periodic_system_and_float32():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((5, 5, 5))
    atoms.rattle(0.05, seed=3)
    assert_same_as_ase(atoms, 5.0)
    i, j, S = ours(atoms, 5.0, dtype=torch.float32)
    i64, j64, S64 = ours(atoms, 5.0)
    # same pairs from float32 input (no pair sits within float32 round-off of the cutoff here)
    assert as_set(i, j, S) == as_set(i64, j64, S64)
    assert i.dtype == torch.int64 and S.dtype == torch.int64 and S.shape == (len(i), 3)


@pytest.mark.parametrize("max_padding", [0.0, 1e9])  # always the flat run / always padded rows
def test_both_candidate_layouts_match_ase(monkeypatch, max_padding):
    import ase_eqgnn.neighbors.cell_list as neighbors

    monkeypatch.setattr(neighbors, "_MAX_PADDING", max_padding)
    rng = np.random.default_rng(4)
    for pbc in [(True, True, True), (True, False, True), (False, False, False)]:
        cell = np.diag([7.0, 8.0, 6.5]) + np.triu(rng.normal(size=(3, 3)), 1)
        atoms = Atoms(numbers=np.ones(60, int), positions=rng.uniform(-0.3, 1.3, (60, 3)) @ cell,
                      cell=cell, pbc=pbc)
        assert_same_as_ase(atoms, 3.1)
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    crystal.rattle(0.1, seed=1)
    assert_same_as_ase(crystal, 5.0)


def test_many_chunks_give_the_same_list(monkeypatch):
    import ase_eqgnn.neighbors.cell_list as neighbors

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((4, 4, 3))
    atoms.rattle(0.1, seed=5)
    expected = as_set(*ours(atoms, 4.5))
    monkeypatch.setattr(neighbors, "_MAX_CANDIDATES_PER_CHUNK", 500)  # a few atoms per chunk
    assert as_set(*ours(atoms, 4.5)) == expected


@pytest.mark.parametrize("pbc", [True, False])
def test_pairs_within_float32_round_off_of_the_cutoff(pbc):
    # A perfect lattice has many pairs at exactly the third-neighbour distance d; cutoffs of
    # d * (1 +- 1e-9) must take all or none of them. The float32 screen cannot tell them apart, the
    # float64 check must. Far from the origin (non-periodic case), float32 coordinates are coarser.
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.pbc = pbc
    if not pbc:
        atoms.positions += 1000.0
    d = 3.6 * np.sqrt(1.5)
    n_inside = len(ours(atoms, d * (1 - 1e-9))[0])
    n_outside = len(ours(atoms, d * (1 + 1e-9))[0])
    assert n_outside - n_inside > 1000 if pbc else n_outside - n_inside > 300
    assert_same_as_ase(atoms, d * (1 - 1e-9))
    assert_same_as_ase(atoms, d * (1 + 1e-9))


@pytest.mark.parametrize("n_drop", [1, 7, 30, 50])
def test_dropping_pairs_keeps_every_other_pair(n_drop):
    from ase_eqgnn.neighbors.screening import drop as _drop

    rng = np.random.default_rng(n_drop)
    a, b = torch.randperm(50), torch.arange(50) * 10
    drop = torch.tensor(np.sort(rng.choice(50, n_drop, replace=False)))
    a2, b2 = _drop(drop, a.clone(), b.clone())
    keep = np.setdiff1d(np.arange(50), drop.numpy())
    assert sorted(zip(a2.tolist(), b2.tolist())) == sorted(zip(a[keep].tolist(), b[keep].tolist()))


def test_atoms_far_outside_the_cell():
    # fractional coordinates of up to 7e5: wraps too large for the packed shifts, added as rows instead
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=2)
    atoms.positions[:3] += np.array([7e5, -6e5, 5e5])[:, None] * atoms.cell[0]
    i, j, S = ours(atoms, 4.0)
    reference = atoms.copy()
    reference.wrap()
    vec = atoms.positions[j] - atoms.positions[i] + S.numpy() @ atoms.cell[:]
    ref_i, ref_j, ref_d = ase_neighbor_list("ijd", reference, 4.0)
    assert sorted(zip(i.tolist(), j.tolist(), np.round(np.linalg.norm(vec, axis=1), 6))) == sorted(
        zip(ref_i.tolist(), ref_j.tolist(), np.round(ref_d, 6)))


def test_output_is_a_full_list():
    atoms = bulk("Cu", "fcc", a=3.6).repeat(3)
    atoms.rattle(0.1, seed=0)
    i, j, S = ours(atoms, 4.0)
    pairs = as_set(i, j, S)
    assert all((b, a, tuple(-x for x in s)) in pairs for a, b, s in pairs)


def test_gradients_flow_through_recomputed_distances():
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.rattle(0.1, seed=0)
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell[:])
    i, j, S = neighbor_list(pos, 3.0, cell, True)
    d = (pos[j] - pos[i] + S.double() @ cell).norm(dim=1)
    d.sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all()


def test_batched_matches_individual_lists():
    rng = np.random.default_rng(7)
    systems = [bulk("Cu", "fcc", a=3.6).repeat(2), molecule("CH3CH2OH"), bulk("Al", "fcc", a=4.05)]
    systems[0].rattle(0.1, seed=1)
    slab = bulk("Ni", "fcc", a=3.5, cubic=True).repeat((2, 2, 1))
    slab.pbc = (True, False, True)
    systems.append(slab)
    pos = torch.tensor(np.concatenate([a.positions for a in systems]))
    batch = torch.tensor(np.repeat(np.arange(len(systems)), [len(a) for a in systems]))
    cells = torch.tensor(np.stack([a.cell[:] for a in systems]))
    pbcs = torch.tensor(np.stack([a.pbc for a in systems]))
    i, j, S = batched_neighbor_list(pos, 3.2, batch, cells, pbcs)
    expected = set()
    offset = 0
    for a in systems:
        ii, jj, SS = ase_neighbor_list("ijS", a, 3.2)
        expected |= as_set(ii + offset, jj + offset, SS)
        offset += len(a)
    assert as_set(i, j, S) == expected
    assert torch.equal(batch[i], batch[j])  # never across structures
    del rng


class TestVerletList:
    def setup_method(self):
        atoms = bulk("Cu", "fcc", a=3.6).repeat(3)
        atoms.rattle(0.05, seed=2)
        self.atoms = atoms
        self.cell = torch.tensor(atoms.cell[:])
        self.pos = torch.tensor(atoms.positions)
        self.numbers = torch.tensor(atoms.numbers)

    def call(self, nl, pos, cell=None, numbers=None):
        return nl(pos, self.cell if cell is None else cell, [True] * 3,
                  self.numbers if numbers is None else numbers)

    def test_returns_exact_list_and_rebuilds_only_past_half_skin(self):
        nl = VerletList(cutoff=4.0, skin=1.0)
        self.call(nl, self.pos)
        assert nl.builds == 1
        moved = self.pos.clone()
        moved[5, 0] += 0.49  # just under skin / 2
        got = self.call(nl, moved)
        assert nl.builds == 1
        atoms = self.atoms.copy()
        atoms.positions = moved.numpy()
        assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, 4.0))
        moved[5, 0] += 0.02  # now just over skin / 2 from the build
        got = self.call(nl, moved)
        assert nl.builds == 2
        atoms.positions = moved.numpy()
        assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, 4.0))

    def test_many_small_moves_stay_exact(self):
        nl = VerletList(cutoff=3.0, skin=0.4)
        rng = np.random.default_rng(0)
        pos = self.pos.clone()
        atoms = self.atoms.copy()
        for _ in range(15):
            pos = pos + torch.tensor(rng.normal(scale=0.03, size=pos.shape))
            atoms.positions = pos.numpy()
            assert as_set(*self.call(nl, pos)) == as_set(*ase_neighbor_list("ijS", atoms, 3.0))
        assert 1 < nl.builds < 15

    def test_cell_pbc_numbers_changes_rebuild(self):
        nl = VerletList(cutoff=3.0, skin=0.5)
        self.call(nl, self.pos)
        self.call(nl, self.pos, cell=self.cell * 1.0001)
        assert nl.builds == 2
        numbers = self.numbers.clone()
        numbers[3] = 28
        self.call(nl, self.pos, cell=self.cell * 1.0001, numbers=numbers)
        assert nl.builds == 3
        nl(self.pos, self.cell * 1.0001, [True, True, False], numbers)
        assert nl.builds == 4
        nl(self.pos[:-1], self.cell * 1.0001, [True, True, False], numbers[:-1])
        assert nl.builds == 5


    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_batched_list_stays_exact(self, dtype):
        """Three structures (two periodic cells, an open cluster) in one batch, moved in small
        steps: the reused list, pruned with each structure's own cell, equals a fresh list."""
        other = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
        parts = [self.pos, torch.tensor(other.positions), self.pos[:12] * 0.9]
        pos = torch.cat(parts).to(dtype)
        batch = torch.cat([torch.full((len(x),), k) for k, x in enumerate(parts)])
        cell = torch.stack([self.cell, torch.tensor(other.cell[:]), torch.zeros(3, 3)]).to(dtype)
        pbc = torch.tensor([[True] * 3, [True] * 3, [False] * 3])
        numbers = torch.full((len(pos),), 29)
        nl = VerletList(cutoff=3.0, skin=0.5)
        rng = np.random.default_rng(5)
        for _ in range(8):
            pos = pos + torch.tensor(rng.normal(scale=0.03, size=pos.shape), dtype=dtype)
            got = nl(pos, cell, pbc, numbers, batch)
            want = batched_neighbor_list(pos.double(), 3.0, batch, cell.double(), pbc)
            assert as_set(*got) == as_set(*want)
        assert 1 <= nl.builds < 8


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan"), float("inf"), "abc"])
def test_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(torch.zeros(2, 3), cutoff)


def test_bad_positions_and_cells():
    pos = torch.rand(4, 3)
    with pytest.raises(ValueError, match="NaN"):
        neighbor_list(torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0]]), 2.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        neighbor_list(torch.tensor([[0.0, 0, 0], [float("inf"), 0, 0]]), 2.0)
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        neighbor_list(torch.rand(4, 2), 2.0)
    with pytest.raises(ValueError, match="singular"):
        neighbor_list(pos, 2.0, torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]), True)
    with pytest.raises(ValueError, match="singular"):
        neighbor_list(pos, 2.0, torch.zeros(3, 3), [True, False, False])
    # a degenerate vector along a non-periodic direction is fine
    neighbor_list(pos, 2.0, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.0]]), [True, True, False])
    with pytest.raises(ValueError, match="cell must have shape"):
        neighbor_list(pos, 2.0, torch.eye(2), True)
    with pytest.raises(ValueError, match="pbc"):
        neighbor_list(pos, 2.0, torch.eye(3), [True, False])
    with pytest.raises(ValueError, match="batch"):
        batched_neighbor_list(pos, 2.0, torch.tensor([0, 0, 1]), torch.eye(3).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="skin"):
        VerletList(2.0, skin=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(4)
    atoms.rattle(0.05, seed=0)
    cpu = ours(atoms, 5.0)
    pos = torch.tensor(atoms.positions, device="cuda")
    gpu = neighbor_list(pos, 5.0, torch.tensor(atoms.cell[:], device="cuda"), True)
    assert gpu[0].device.type == "cuda"
    assert as_set(*cpu) == as_set(*gpu)


@pytest.mark.skipif(not __import__("ase_eqgnn.neighbors").neighbors.vesin_available(),
                    reason="vesin-torch not installed")
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_vesin_backend_matches_ase(pbc):
    from ase_eqgnn.neighbors import vesin_neighbor_list

    rng = np.random.default_rng(3)
    for cell, cutoff in ((np.diag([7.0, 8.0, 9.0]), 3.0), (np.array([[2.0, 0, 0], [1.5, 1.8, 0],
                                                                        [0.3, 0.4, 1.9]]), 4.0)):
        atoms = Atoms("H12", positions=rng.uniform(-0.3, 1.3, (12, 3)) @ cell, cell=cell, pbc=pbc)
        got = vesin_neighbor_list(torch.tensor(atoms.positions), cutoff, torch.tensor(cell), pbc)
        assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, cutoff))
    nl = VerletList(3.0, skin=0.3, backend="vesin")
    atoms = bulk("Cu", "fcc", a=3.6).repeat(3)
    atoms.rattle(0.05, seed=0)
    got = nl(torch.tensor(atoms.positions), torch.tensor(atoms.cell[:]), [True] * 3)
    assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, 3.0))


@pytest.mark.parametrize("subdivisions", [2, 3])
def test_finer_bins_give_the_same_list(subdivisions):
    rng = np.random.default_rng(subdivisions)
    cell = np.array([[6.0, 0, 0], [1.5, 5.5, 0], [0.7, 0.9, 5.0]])
    atoms = Atoms("H40", positions=rng.uniform(-0.2, 1.2, (40, 3)) @ cell, cell=cell,
                  pbc=(True, True, False))
    got = batched_neighbor_list(torch.tensor(atoms.positions), 2.7, None, torch.tensor(cell),
                                torch.tensor(atoms.pbc), subdivisions=subdivisions)
    assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, 2.7))


@pytest.mark.skipif(not __import__("ase_eqgnn.neighbors").neighbors.cluster_available(),
                    reason="torch-cluster not installed (optional extra ase_eqgnn[cluster])")
def test_torch_cluster_path_matches_ase():
    from ase_eqgnn.neighbors import cluster_neighbor_list

    molecules = [molecule("C6H6"), molecule("CH3CH2OH")]
    dense = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)  # 108 atoms, >32 neighbours at 5.5 Å
    dense.pbc = False
    molecules.append(dense)
    pos = torch.tensor(np.concatenate([m.positions for m in molecules]))
    batch = torch.tensor(np.repeat(np.arange(3), [len(m) for m in molecules]))
    i, j, S = cluster_neighbor_list(pos, 5.5, batch)
    expected, offset = set(), 0
    for m in molecules:
        ii, jj, SS = ase_neighbor_list("ijS", m, 5.5)
        expected |= as_set(ii + offset, jj + offset, SS)
        offset += len(m)
    assert as_set(i, j, S) == expected


# ------------------------------------------------------------------------------------------------
# Inputs that crash other lists or exhaust memory
# ------------------------------------------------------------------------------------------------
_FALLBACK_SCRIPT = r"""
import numpy as np, torch
from ase_eqgnn.neighbors import VerletList, neighbor_list, vesin_neighbor_list

def key(r):
    return sorted(zip(r[0].tolist(), r[1].tolist(), map(tuple, r[2].tolist())))

rng = np.random.default_rng(0)
box = torch.eye(3, dtype=torch.float64) * 5
cluster = rng.random((12, 3)) * 5
away = np.zeros((12, 3))
cases = {  # (positions, cell, pbc): vesin-torch 0.6 dies with SIGFPE on each of these
    "atom 1e6 A away": (cluster + (away + [1e6, 0, 0]) * (np.arange(12) == 0)[:, None], None, None),
    "flat cloud 1e4 A wide": (np.c_[rng.random((12, 2)) * 1e4, np.zeros(12)], None, None),
    "slab, atom 1e6 A above": (cluster + (away + [0, 0, 1e6]) * (np.arange(12) == 0)[:, None], box,
                               [True, True, False]),
    "no atoms": (np.zeros((0, 3)), None, None),
}
for name, (pos, cell, pbc) in cases.items():
    pos = torch.tensor(pos, dtype=torch.float64)
    got = vesin_neighbor_list(pos, 3.0, cell, pbc)
    assert key(got) == key(neighbor_list(pos, 3.0, cell, pbc)), name
    auto = VerletList(3.0, skin=0.5, backend="auto")(pos, cell, pbc)
    assert key(auto) == key(neighbor_list(pos, 3.0, cell, pbc)), name
print("survived")
"""


@pytest.mark.skipif(not __import__("ase_eqgnn.neighbors").neighbors.vesin_available(),
                    reason="vesin-torch not installed")
def test_inputs_that_kill_vesin_go_to_the_cell_list():
    # In a subprocess: a crash there fails this test instead of killing pytest.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])


def test_vesin_grid_fits_matches_vesins_grid_cap():
    from ase_eqgnn.neighbors.backends import vesin_grid_fits

    cube = torch.rand(10, 3, dtype=torch.float64) * 100  # 33^3 cells: within the cap
    no_cell, no_pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    assert vesin_grid_fits(cube, 3.0, no_cell, no_pbc)
    line = torch.zeros(2, 3, dtype=torch.float64)
    line[1, 0] = 1e6  # 333,333 x 1 x 1 cells
    assert not vesin_grid_fits(line, 3.0, no_cell, no_pbc)
    # periodic directions count the cell, not the atoms
    assert not vesin_grid_fits(cube, 3.0, np.diag([1e4, 1e4, 5.0]), np.ones(3, dtype=bool))
    assert vesin_grid_fits(cube, 3.0, np.diag([30.0, 30.0, 30.0]), np.ones(3, dtype=bool))
    # nor cells so thin that atoms meet thousands of images (vesin grows its list until it fails)
    assert not vesin_grid_fits(cube, 3.0, np.eye(3) * 0.01, np.ones(3, dtype=bool))
    assert vesin_grid_fits(cube, 6.0, np.eye(3) * 2.0, np.ones(3, dtype=bool))  # 7^3 images


def test_cluster_with_a_far_atom_matches_ase():
    cluster = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    cluster.pbc = False
    cluster.rattle(0.05, seed=4)
    for far in (1e6, 1e9):
        atoms = cluster.copy()
        atoms.positions[0] += [far, -far / 3, 0.0]
        assert_same_as_ase(atoms, 4.0)


def test_cells_far_thinner_than_the_cutoff_are_refused_cleanly():
    rng = np.random.default_rng(0)
    pos = torch.tensor(rng.random((10, 3)) * 0.01)
    with pytest.raises(ValueError, match="thinner than the cutoff"):
        neighbor_list(pos, 3.0, torch.eye(3) * 0.01, True)
    # a 1-D chain of period 0.001 Å: 6,000 images of every atom within the cutoff
    with pytest.raises(ValueError, match="neighbours per atom"):
        neighbor_list(torch.tensor(rng.random((5, 3))), 3.0, torch.eye(3) * 0.001, [True, False, False])


def test_piles_of_overlapping_atoms_are_refused_before_memory_runs_out():
    pile = torch.tensor(np.random.default_rng(0).random((30_000, 3)))  # 30,000 atoms in 1 Å^3
    with pytest.raises(ValueError, match="neighbours per atom"):
        neighbor_list(pile, 3.0)
    small = torch.tensor(np.random.default_rng(1).random((300, 3)))  # dense, but a valid list
    assert neighbor_list(small, 3.0)[0].numel() == 300 * 299


def test_coordinates_beyond_float64_resolution_are_refused():
    with pytest.raises(ValueError, match="from the origin"):
        neighbor_list(torch.tensor([[0.0, 0, 0], [1e12, 0, 0]]), 3.0)
    with pytest.raises(ValueError, match="lattice vector"):
        neighbor_list(torch.zeros(2, 3), 3.0, torch.eye(3) * 1e12, True)
    # a huge cell along a non-periodic direction is ignored, as it should be
    assert neighbor_list(torch.zeros(2, 3), 3.0, torch.eye(3) * 1e12, False)[0].numel() == 2


def test_integer_positions_and_bad_lengths():
    atoms = Atoms("H4", positions=[[0, 0, 0], [1, 0, 0], [0, 2, 0], [3, 3, 3]])
    got = neighbor_list(torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, 0], [3, 3, 3]]), 2.5)
    assert as_set(*got) == as_set(*ase_neighbor_list("ijS", atoms, 2.5))
    for skin in (float("nan"), float("inf"), -0.1, "wide", True):
        with pytest.raises(ValueError, match="skin"):
            VerletList(2.0, skin=skin)
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(torch.zeros(2, 3), True)


def test_near_origin_keeps_every_pair_vector():
    from ase_eqgnn.graph import AtomicGraph, edge_vectors

    rng = np.random.default_rng(5)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.positions += rng.normal(scale=0.1, size=cu.positions.shape) + [7e5, -3e5, 2e5]
    slab = cu.copy()
    slab.pbc = (True, False, True)
    pieces = molecule("CH3CH2OH")
    pieces.positions += [-4e5, 1e5, 9e5]
    far = molecule("H2O")
    far.positions += [3e6, 0, 0]
    pieces += far  # two pieces no pair links, 3e6 Å apart
    graphs = [AtomicGraph.from_atoms(a) for a in (cu, slab, pieces)]
    for graph in graphs + [AtomicGraph.collate(graphs)]:
        graph = graph.with_neighbors(3.0)
        moved = graph.near_origin()
        before = edge_vectors(graph.positions, graph.cell, graph.batch, graph.edge_index, graph.shifts)
        after = edge_vectors(moved.positions, moved.cell, moved.batch, moved.edge_index, moved.shifts)
        assert torch.allclose(before, after, atol=1e-9, rtol=0)
        assert float(moved.positions.abs().max()) < 20.0  # every atom near the origin
