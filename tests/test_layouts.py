"""The fast neighbour layouts (models/layouts.py, models/tp_fused.py) against the reference edge list.

Every fast layout must give the reference's numbers: neighbour sums, and for whole models energies,
forces, stress and the parameter gradients of a force loss (what training differentiates).
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ase_eqgnn import keys
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.indexing import scatter_rows
from ase_eqgnn.models import build_model, layouts
from ase_eqgnn.models.layouts import PaddedNeighborhood, neighborhoods, reuse_layouts
from ase_eqgnn.models.neighborhood import EdgeList, Layered, build_neighborhood

SPECIES = [1, 6, 8, 29]



@pytest.fixture(autouse=True)
def _float64_default():
    """e3nn builds its Clebsch-Gordan constants in the default dtype, also for the tp reference path
    (built at first use): float64 here, so the references carry float64 precision."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def force(monkeypatch):
    """force(kind): make the thresholds choose that layout wherever the structure allows it."""
    def _force(kind):
        monkeypatch.setattr(layouts, "_MIN_SHARED_SLOTS_SAVED", 0 if kind == "shared" else 10**9)
        monkeypatch.setattr(layouts, "_MIN_SHARED_SAVING", 0.0 if kind == "shared" else 2.0)
        monkeypatch.setattr(layouts, "_DENSE_PADDING", 1e9 if kind == "dense" else 0.0)
        monkeypatch.setattr(layouts, "LEAN_GATHER_BYTES", 0 if kind == "regather" else 2**62)
    return _force


def random_edges(n_nodes, degrees, seed):
    gen = torch.Generator().manual_seed(seed)
    i = torch.repeat_interleave(torch.arange(n_nodes), torch.tensor(degrees))
    j = torch.randint(0, n_nodes, (i.numel(),), generator=gen)
    perm = torch.randperm(i.numel(), generator=gen)  # any edge order
    return i[perm], j[perm], gen


def assert_same_operations(nbh, i, j, n_nodes, gen):
    """Every interface operation of ``nbh`` equals the reference edge list's."""
    ref = EdgeList(torch.stack([i, j]), n_nodes)
    t = torch.randn(i.numel(), 4, dtype=torch.float64, generator=gen)
    x = torch.randn(n_nodes, 3, 4, dtype=torch.float64, generator=gen)
    u = torch.randn(i.numel(), 3, dtype=torch.float64, generator=gen)
    ua = torch.randn(i.numel(), 2, 5, dtype=torch.float64, generator=gen)
    ma = torch.randn(i.numel(), 2, 4, dtype=torch.float64, generator=gen)
    for nb in (nbh, ref):
        assert nb.n_nodes == n_nodes
    torch.testing.assert_close(nbh.sum(nbh.edges(t)), ref.sum(ref.edges(t)))
    torch.testing.assert_close(ref.sum(t), scatter_rows(t, i, n_nodes))  # the reference itself
    for op in ("gather", "centre"):
        got = nbh.sum(nbh.edges(t)[..., None, :] * getattr(nbh, op)(x))
        want = ref.sum(t[:, None, :] * getattr(ref, op)(x))
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(nbh.sum(nbh.gather_product(x, nbh.edges(t).unsqueeze(-2))),
                               ref.sum(ref.gather_product(x, t.unsqueeze(-2))))
    torch.testing.assert_close(nbh.sum_outer(nbh.edges(u), nbh.edges(t)), ref.sum_outer(u, t))
    torch.testing.assert_close(nbh.sum_outer(nbh.edges(ua), nbh.edges(ma)), ref.sum_outer(ua, ma))
    torch.testing.assert_close(ref.sum_outer(u, t), scatter_rows(u[:, :, None] * t[:, None, :], i,
                                                                 n_nodes))


@pytest.mark.parametrize("n_nodes", [7, 8])
@pytest.mark.parametrize("kind", ["padded", "shared", "regather"])
def test_padded_layouts_compute_the_reference_operations(force, kind, n_nodes):
    force(kind)
    degrees = [0, 1, 9, 3, 12, 2, 5, 11][:n_nodes]  # uneven, with an atom without neighbours
    i, j, gen = random_edges(n_nodes, degrees, n_nodes)
    nbh = PaddedNeighborhood(torch.stack([i, j]), n_nodes, share_rows=True)
    assert nbh.shared == (kind == "shared")
    if nbh.shared:
        assert nbh.n_rows == (n_nodes + 1) // 2 and nbh.n_rows * nbh.width < n_nodes * max(degrees)
    assert_same_operations(nbh, i, j, n_nodes, gen)


@pytest.mark.parametrize("kind", ["padded", "shared", "regather"])
def test_atoms_after_the_last_centre_get_no_rows(force, kind):
    """LAMMPS's ghost atoms come last and, with the halo exchange, are never centres: they get no
    rows, and every operation still gives [N, ...] results equal to the reference."""
    force(kind)
    n_nodes = 11
    degrees = [0, 1, 9, 3, 12, 2, 5, 11] + [0, 0, 0]  # atoms 8..10: neighbours only
    i, j, gen = random_edges(n_nodes, degrees, 3)
    nbh = PaddedNeighborhood(torch.stack([i, j]), n_nodes, share_rows=True)
    assert nbh.n_rows == (4 if nbh.shared else 8)
    assert nbh.shared == (kind == "shared")
    assert_same_operations(nbh, i, j, n_nodes, gen)


def test_dense_layout_computes_the_reference_operations(force):
    force("dense")
    gen = torch.Generator().manual_seed(3)
    n = 6
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & (torch.rand(n, n, generator=gen) < 0.7)
    i, j = i[keep], j[keep]
    perm = torch.randperm(i.numel(), generator=gen)
    i, j = i[perm], j[perm]
    nbh = PaddedNeighborhood(torch.stack([i, j]), n, dense=True)
    assert nbh.dense and nbh.width == n
    assert_same_operations(nbh, i, j, n, gen)


def test_dense_layout_is_refused_for_periodic_images(force):
    force("dense")
    g = AtomicGraph.from_atoms(bulk("Cu", "fcc", a=3.6)).with_neighbors(3.9)  # one atom, many images
    assert g.num_edges > 0
    assert not PaddedNeighborhood(g.edge_index, g.num_atoms, dense=True).dense


def test_build_neighborhood_picks_the_reference_on_request():
    edge_index = torch.tensor([[0, 1], [1, 0]])
    assert isinstance(build_neighborhood(edge_index, 2, "reference", {"share_rows": True}), EdgeList)
    assert isinstance(build_neighborhood(edge_index, 2, "auto", None), EdgeList)
    assert isinstance(build_neighborhood(edge_index, 2, "auto", {"share_rows": True}),
                      PaddedNeighborhood)
    with pytest.raises(ValueError, match="layout must be one of auto, reference"):
        build_neighborhood(edge_index, 2, "padded")


# -------------------------------------------------------------------------------------------------
# Whole models: every layout a family can take equals its reference path
# -------------------------------------------------------------------------------------------------
def structures():
    rng = np.random.default_rng(5)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    cu.rattle(0.1, seed=3)
    cluster = Atoms(rng.choice(SPECIES, 23), positions=rng.uniform(0, 7, (23, 3)))  # uneven degrees
    mol = molecule("CH3CH2OH")  # small: every atom sees every other
    mol.rattle(0.05, seed=4)
    return {"periodic": cu, "cluster": cluster, "molecule": mol}


def make(name):
    torch.manual_seed(0)
    small = {"painn": dict(features=8, layers=3, n_radial=6),
             "tp": dict(features=4, layers=3, l_max=2, n_radial=6, radial_hidden=8),
             "egnn": dict(features=8, layers=3, n_radial=6, coord_update=True)}[name]
    model = build_model(name, SPECIES, 3.9, **small)
    with torch.no_grad():
        model.scale.fill_(1.3)
        model.E0.normal_()
    return model


def results(model, atoms, layout):
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff)
    model.zero_grad()
    stress = bool(atoms.pbc.all())
    out = model(graph, forces=True, stress=stress, create_graph=True, layout=layout)
    out[keys.FORCES].square().sum().backward()  # a force loss, as in training
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    kept = [out[keys.ENERGY], out[keys.ENERGIES], out[keys.FORCES]] + (
        [out[keys.STRESS]] if stress else [])
    return [t.detach() for t in kept] + [grads]


@pytest.mark.parametrize("name, kind", [("painn", "padded"), ("painn", "shared"), ("painn", "dense"),
                                        ("painn", "regather"), ("tp", "padded"), ("tp", "shared"),
                                        ("egnn", "padded")])
@pytest.mark.parametrize("system", ["periodic", "cluster", "molecule"])
def test_every_layout_equals_the_reference_path(force, name, kind, system):
    """Energies, per-atom energies, forces, stress and force-loss parameter gradients."""
    force(kind)
    model, atoms = make(name), structures()[system]
    fast, ref = results(model, atoms, "auto"), results(model, atoms, "reference")
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert fast[2].abs().max() > 1e-3 and fast[-1].abs().max() > 1e-6  # non-trivial


def test_the_thresholds_pick_each_layout_where_it_pays():
    """With the shipped thresholds: shared rows for a cluster, dense for a small molecule, padded
    for a crystal."""
    s = structures()
    model = make("painn")
    kinds = {}
    for system, atoms in s.items():
        g = AtomicGraph.from_atoms(atoms).with_neighbors(6.0)
        nbh = model.neighborhood(g.edge_index, g.num_atoms)
        kinds[system] = "dense" if nbh.dense else "shared" if nbh.shared else "padded"
    assert kinds["molecule"] == "dense" and kinds["periodic"] == "padded"
    water = molecule("H2O")
    cluster = Atoms()
    for x in range(4):
        for y in range(4):
            for z in range(2):
                w = water.copy()
                w.translate([3 * x, 3 * y, 3 * z])
                cluster += w
    g = AtomicGraph.from_atoms(cluster).with_neighbors(5.0)
    assert model.neighborhood(g.edge_index, g.num_atoms).shared  # 96 atoms, uneven degrees


@pytest.mark.parametrize("shape, w_shape", [((6,), (6,)), ((3, 4), (1, 4))])
def test_regathering_has_exact_first_and_second_derivatives(monkeypatch, shape, w_shape):
    gen = torch.Generator().manual_seed(1)
    i = torch.tensor([0, 0, 1, 2, 2, 2, 4])
    j = torch.tensor([1, 3, 0, 4, 1, 0, 2])
    nbh = PaddedNeighborhood(torch.stack([i, j]), 5)
    x = torch.randn((5,) + shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn((nbh.n_rows, nbh.width) + w_shape, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    monkeypatch.setattr(layouts, "LEAN_GATHER_BYTES", 0)
    torch.testing.assert_close(nbh.gather_product(x, w), nbh.gather(x) * w)
    assert torch.autograd.gradcheck(nbh.gather_product, (x, w), atol=1e-9, rtol=1e-7)
    assert torch.autograd.gradgradcheck(nbh.gather_product, (x, w), atol=1e-9, rtol=1e-7)


def test_layouts_are_reused_only_inside_reuse_layouts():
    edge_index = torch.tensor([[0, 0, 1, 2], [1, 2, 0, 0]])
    assert neighborhoods(edge_index, 3) is not neighborhoods(edge_index, 3)
    with reuse_layouts() as kept:
        first = neighborhoods(edge_index, 3, share_rows=True)
        assert any(layout is first for _, layout in kept.values())  # the caller can keep them
        assert neighborhoods(edge_index, 3, share_rows=True) is first
        assert neighborhoods(edge_index.clone(), 3, share_rows=True) is not first  # another tensor
        assert neighborhoods(edge_index, 3) is not first  # other options
        edge_index[1, 0] = 2  # changed in place: a new layout
        assert neighborhoods(edge_index, 3, share_rows=True) is not first
    assert neighborhoods(edge_index, 3) is not neighborhoods(edge_index, 3)


# -------------------------------------------------------------------------------------------------
# The fused tensor product against e3nn's TensorProduct
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l_max", [1, 2, 3])
@pytest.mark.parametrize("share", [False, True])
def test_fused_tensor_product_equals_e3nn(force, l_max, share):
    """The neighbour-fused "uvu" product equals e3nn's TensorProduct followed by a scatter-sum."""
    from e3nn import o3

    from ase_eqgnn.models.tp import natural_irreps, uvu_instructions
    from ase_eqgnn.models.tp_fused import NeighborTensorProduct

    force("shared" if share else "padded")
    torch.manual_seed(0)
    irreps_in, irreps_sh = natural_irreps(3, l_max), o3.Irreps.spherical_harmonics(l_max)
    mid, instructions = uvu_instructions(irreps_in, irreps_sh, natural_irreps(3, l_max))
    fused = NeighborTensorProduct(irreps_in, irreps_sh, mid, instructions)
    reference = o3.TensorProduct(irreps_in, irreps_sh, mid, instructions, shared_weights=False,
                                 internal_weights=False)
    n = 9
    i, j, _ = random_edges(n, [3, 0, 5, 8, 1, 2, 7, 4, 6], seed=l_max)
    x = irreps_in.randn(n, -1)
    y = irreps_sh.randn(i.numel(), -1)
    w = torch.randn(i.numel(), fused.weight_numel)
    expected = scatter_rows(reference(x[j], y, w), i, n)
    nbh = PaddedNeighborhood(torch.stack([i, j]), n, share_rows=True)
    assert nbh.shared == share
    got = fused(x, nbh.edges(y), nbh.edges(w), nbh, {})
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fused_constants_stay_exact_through_dtype_casts():
    from ase_eqgnn.models.tp import natural_irreps, uvu_instructions
    from ase_eqgnn.models.tp_fused import NeighborTensorProduct
    from e3nn import o3

    irreps, sh = natural_irreps(2, 2), o3.Irreps.spherical_harmonics(2)
    fused = NeighborTensorProduct(irreps, sh, *uvu_instructions(irreps, sh, irreps))
    exact = [fused.clebsch_gordan(k, torch.float64).clone() for k in range(len(fused.paths))]
    fused.float().double()
    for k, c in enumerate(exact):
        assert torch.equal(fused.clebsch_gordan(k, torch.float64), c)
    assert "cg_0" not in fused.state_dict()


def test_calculator_layout_option_selects_the_reference_path():
    from ase_eqgnn import EqGNNCalculator

    model = make("tp")
    atoms = structures()["periodic"]
    got = {}
    for layout in ("auto", "reference"):
        calc = EqGNNCalculator(model, dtype="float64", layout=layout)
        calc.calculate(atoms, ["energy", "forces", "stress"])
        got[layout] = calc.results
    for key in ("energy", "forces", "stress"):
        np.testing.assert_allclose(got["auto"][key], got["reference"][key], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="layout must be one of"):
        EqGNNCalculator(model, layout="fast")


@pytest.mark.parametrize("name", ["painn", "tp", "egnn"])
@pytest.mark.parametrize("n_atoms", [0, 1])
def test_structures_without_edges_have_zero_interaction_energy(name, n_atoms):
    """No atoms, or one isolated atom: energy E0 (or 0), zero forces, in both layouts."""
    model = make(name)
    atoms = Atoms("C" * n_atoms, positions=np.zeros((n_atoms, 3)))
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff)
    for layout in ("auto", "reference"):
        out = model(graph, forces=True, layout=layout)
        assert out[keys.FORCES].shape == (n_atoms, 3) and not out[keys.FORCES].any()
        assert out[keys.ENERGIES].shape == (n_atoms,)
    if n_atoms == 0:
        assert float(out[keys.ENERGY][0]) == 0.0


# -------------------------------------------------------------------------------------------------
# Layered: energies wanted on some atoms only (LAMMPS's local atoms), each layer on fewer pairs
# -------------------------------------------------------------------------------------------------
def graph_hops(i, j, n_nodes, sources):
    """Breadth-first graph distances from ``sources`` (plain Python, independent of the package)."""
    neighbours = [set() for _ in range(n_nodes)]
    for a, b in zip(i.tolist(), j.tolist()):
        neighbours[a].add(b)
        neighbours[b].add(a)
    hop, frontier = {s: 0 for s in sources}, list(sources)
    while frontier:
        nxt = []
        for a in frontier:
            for b in neighbours[a]:
                if b not in hop:
                    hop[b] = hop[a] + 1
                    nxt.append(b)
        frontier = nxt
    return torch.tensor([hop.get(a, n_nodes) for a in range(n_nodes)])


@pytest.mark.parametrize("name, kind", [("painn", "padded"), ("painn", "shared"), ("painn", "dense"),
                                        ("tp", "padded"), ("tp-c2", "shared"), ("egnn", "padded")])
@pytest.mark.parametrize("wanted_hops", [0, 1])
@pytest.mark.parametrize("reuse_above", [1.0, 0.0])  # every layer its own pairs / layer 0's for all
def test_layered_neighbourhood_gives_the_wanted_energies_exactly(force, monkeypatch, name, kind,
                                                                   wanted_hops, reuse_above):
    """The energies of the atoms within ``wanted_hops`` of the sources, and the derivative of their
    sum by every edge vector, equal the full reference path's, while later layers sum over fewer
    pairs."""
    force(kind)
    monkeypatch.setattr(Layered, "REUSE_ABOVE", reuse_above)
    if name == "tp-c2":
        torch.manual_seed(0)
        model = build_model("tp", SPECIES, 3.9, features=4, layers=3, l_max=1, n_radial=6,
                            radial_hidden=8, correlation=2)
    else:
        model = make(name)
    rng = np.random.default_rng(7)
    atoms = Atoms(rng.choice(SPECIES, 60), positions=rng.uniform(0, 11, (60, 3)))
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff)
    i, j = graph.edge_index
    hop = graph_hops(i, j, len(atoms), sources=[0, 1, 2])
    n_layers = 3
    keep = hop.index_select(0, i) <= wanted_hops + n_layers - 1  # pairs into atoms that matter
    edges = graph.edge_index[:, keep]
    species = model.species_index(graph.numbers)
    pos = graph.positions.to(torch.float64)
    wanted = hop <= wanted_hops

    def wanted_energies(edge_index, neighborhood):
        vec = (pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0]))
        vec.requires_grad_(True)
        e = model.energies_from_edges(species, edge_index, vec, neighborhood)[wanted]
        (g,) = torch.autograd.grad(e.sum(), vec)
        return e.detach(), g

    full = model.neighborhood(graph.edge_index, len(atoms), "reference")
    e_ref, g_ref = wanted_energies(graph.edge_index, full)
    layered = model.partial_neighborhood(edges, len(atoms), hop, wanted_hops)
    e_new, g_new = wanted_energies(edges, layered)
    torch.testing.assert_close(e_new, e_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_new, g_ref[keep], rtol=1e-10, atol=1e-12)
    assert g_ref[~keep].abs().max() == 0  # the pairs left out have no say in the wanted energies
    assert g_new.abs().max() > 1e-4
    last = layered.layer(n_layers - 1)[1]
    assert last.numel() < edges.shape[1] if reuse_above == 1.0 else last is None
