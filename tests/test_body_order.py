"""Body-ordered features (models/body_order.py): the generalised Clebsch–Gordan basis and the
symmetric contraction, against e3nn's ReducedTensorProducts, a direct (non-Horner) evaluation,
rotations with parity, permutations and finite differences."""

import itertools

import pytest
import torch
from e3nn import o3

from ase_eqgnn.models.body_order import SymmetricContraction, symmetric_power_basis


def wigner_d(irreps, g):
    """D(g) of ``irreps`` (natural parities) in float64, from Y(g x) = D Y(x) on random points.

    (e3nn's ``D_from_matrix`` goes through float32 constants: ~1e-7 off, too coarse here.)
    """
    points = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    blocks = []
    for mul, ir in o3.Irreps(irreps):
        assert ir.p == (-1) ** ir.l
        y = o3.spherical_harmonics(ir.l, points, normalize=True)
        y_rot = o3.spherical_harmonics(ir.l, points @ g.T, normalize=True)
        blocks += [torch.linalg.lstsq(y, y_rot).solution.T] * mul
    return torch.block_diag(*blocks)


def natural(l_max, mul=1):
    return o3.Irreps([(mul, (l, (-1) ** l)) for l in range(l_max + 1)])


@pytest.mark.parametrize("l_max, order", [(1, 2), (1, 3), (2, 2), (2, 3), (3, 2)])
def test_basis_spans_the_same_maps_as_e3nn_reduced_tensor_products(l_max, order):
    irreps = natural(l_max)
    formula = {2: "ij=ji", 3: "ijk=jik=ikj"}[order]
    for l in range(l_max + 1):
        ir = o3.Irrep(l, (-1) ** l)
        ours = symmetric_power_basis(irreps, order, ir).flatten(1)
        rtp = o3.ReducedTensorProducts(formula, i=irreps, filter_ir_out=[ir])
        theirs = rtp.change_of_basis.to(torch.float64).reshape(rtp.irreps_out.num_irreps, -1)
        assert ours.shape[0] == theirs.shape[0], (l, ours.shape, theirs.shape)
        # each of e3nn's maps lies in our span (our rows are orthogonal with norm² 2L+1)
        projected = theirs @ ours.T @ ours / ir.dim
        assert torch.allclose(projected, theirs, atol=1e-5), float((projected - theirs).abs().max())


@pytest.mark.parametrize("l_max, order", [(2, 1), (2, 2), (2, 3), (3, 2)])
def test_basis_is_symmetric_orthonormal_and_equivariant_with_parity(l_max, order):
    irreps = natural(l_max)
    rot = o3.rand_matrix(dtype=torch.float64)
    for proper in (True, False):
        g = rot if proper else -rot
        d_in = wigner_d(irreps, g)
        for l in range(l_max + 1):
            ir = o3.Irrep(l, (-1) ** l)
            u = symmetric_power_basis(irreps, order, ir)
            assert len(u) > 0
            gram = torch.einsum("p...,q...->pq", u, u)
            assert torch.allclose(gram, ir.dim * torch.eye(len(u), dtype=torch.float64), atol=1e-12)
            for perm in itertools.permutations(range(order)):
                assert torch.allclose(u, u.permute(0, 1, *[p + 2 for p in perm]), atol=1e-14)
            # U(D x, ..., D x) = D_L U(x, ..., x) for every input slot transformed
            rotated = u
            for slot in range(order):
                rotated = torch.movedim(torch.tensordot(rotated, d_in, dims=([2 + slot], [0])), -1, 2 + slot)
            expected = torch.einsum("mn,pn...->pm...", wigner_d(o3.Irreps([ir]), g), u)
            assert torch.allclose(rotated, expected, atol=1e-12), float((rotated - expected).abs().max())


def test_forbidden_parity_has_no_maps():
    # A power of 0e + 1o cannot make a pseudoscalar: (v·v)^n and such are all proper scalars.
    assert symmetric_power_basis(natural(1), 3, o3.Irrep("0o")).shape == (0, 1, 4, 4, 4)
    assert symmetric_power_basis(natural(1), 2, o3.Irrep("1e")).shape[0] == 0  # v × v = 0


def make_layer(l_max=2, channels=3, correlation=3, n_species=2, out_l_max=None, seed=0):
    torch.manual_seed(seed)
    irreps_out = natural(l_max if out_l_max is None else out_l_max, channels)
    layer = SymmetricContraction(natural(l_max, channels), irreps_out, correlation, n_species)
    return layer.to(torch.float64)  # built in float32, moved: the constants must stay exact


def direct(layer, density, species):
    """The module's formula evaluated term by term with the full tensor powers (no monomials)."""
    n, k = density.shape[0], layer.channels
    x = torch.cat([density[:, sl].reshape(n, k, ir.dim)
                   for sl, (_, ir) in zip(layer.irreps_in.slices(), layer.irreps_in)], dim=-1)
    blocks = []
    for j, (_, ir) in enumerate(layer.irreps_out):
        total = torch.zeros(n, k, ir.dim, dtype=density.dtype)
        for order in range(1, layer.correlation + 1):
            u = symmetric_power_basis(layer.irreps_channel, order, ir)
            if len(u) == 0:
                continue
            power = x
            for _ in range(order - 1):
                power = (power.unsqueeze(-1) * x.reshape(n, k, *([1] * (power.dim() - 2)), -1))
            w = layer.weights[f"order{order}_out{j}"][species]  # [N, paths, K]
            total += torch.einsum("npk,pm...,nk...->nkm", w, u.to(density.dtype), power)
        blocks.append(total.reshape(n, -1))
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_fast_evaluation_equals_the_direct_sum_of_tensor_powers(correlation):
    layer = make_layer(correlation=correlation)
    density = layer.irreps_in.randn(7, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    out = layer(density, species)
    assert torch.allclose(out, direct(layer, density, species), atol=1e-12)


def test_correlation_one_is_a_per_species_channel_linear_map_of_the_density():
    layer = make_layer(correlation=1)
    density = layer.irreps_in.randn(5, -1, dtype=torch.float64)
    species = torch.tensor([1, 0, 1, 1, 0])
    out = layer(density, species)
    for j, (sl, (mul, ir)) in enumerate(zip(layer.irreps_out.slices(), layer.irreps_out)):
        w = layer.weights[f"order1_out{j}"][species, 0]  # one path: the identity on block L, [N, K]
        expected = density[:, sl].reshape(5, mul, ir.dim) * w.unsqueeze(-1)
        assert torch.allclose(out[:, sl], expected.reshape(5, -1), atol=1e-14)


@pytest.mark.parametrize("l_max", [1, 2, 3])
@torch.no_grad()
def test_equivariant_under_rotations_and_reflections_at_float64_round_off(l_max):
    layer = make_layer(l_max=l_max, correlation=3)
    density = layer.irreps_in.randn(6, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1, 0])
    rot = o3.rand_matrix(dtype=torch.float64)
    for g in (rot, -rot):
        d_in, d_out = wigner_d(layer.irreps_in, g), wigner_d(layer.irreps_out, g)
        a = layer(density @ d_in.T, species)
        b = layer(density, species) @ d_out.T
        assert torch.allclose(a, b, atol=1e-12 * float(b.abs().max())), float((a - b).abs().max())


def test_atoms_are_independent_and_permutation_equivariant():
    layer = make_layer()
    density = layer.irreps_in.randn(6, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1, 0])
    perm = torch.randperm(6)
    assert torch.allclose(layer(density[perm], species[perm]), layer(density, species)[perm], atol=1e-14)
    assert torch.allclose(layer(density[2:3], species[2:3]), layer(density, species)[2:3], atol=1e-14)


def test_gradients_match_finite_differences():
    layer = make_layer(l_max=2, channels=2, correlation=3, out_l_max=0)
    density = layer.irreps_in.randn(3, -1, dtype=torch.float64).requires_grad_()
    species = torch.tensor([1, 0, 1])
    assert torch.autograd.gradcheck(lambda a: layer(a, species).sum(), (density,))
    assert torch.autograd.gradgradcheck(lambda a: layer(a, species).pow(2).sum(), (density,))


@torch.no_grad()
def test_float32_model_agrees_with_float64():
    layer = make_layer()
    density = layer.irreps_in.randn(4, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0])
    ref = layer(density, species)
    out32 = layer.to(torch.float32)(density.float(), species)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), ref, atol=1e-5 * float(ref.abs().max()))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="one multiplicity"):
        SymmetricContraction(o3.Irreps("2x0e+3x1o"), o3.Irreps("2x0e"), 2, 1)
    with pytest.raises(ValueError, match="correlation"):
        SymmetricContraction(o3.Irreps("2x0e"), o3.Irreps("2x0e"), 0, 1)
    with pytest.raises(ValueError, match="cannot be formed"):
        SymmetricContraction(o3.Irreps("2x0e"), o3.Irreps("2x1o"), 3, 1)


# ------------------------------------------------------------------------------ inside the tp family
def _tp(seed=0, **hparams):
    from ase_eqgnn.models import build_model

    torch.manual_seed(seed)
    return build_model("tp", ["H", "C", "O"], 4.0, features=4, layers=2, n_radial=4, radial_hidden=8,
                       **hparams)


def test_tp_correlation_one_is_the_two_body_network():
    plain, explicit = _tp(l_max=1), _tp(l_max=1, correlation=1)
    assert not any(isinstance(m, SymmetricContraction) for m in explicit.modules())
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    body = _tp(l_max=1, correlation=2)
    contractions = [m for m in body.modules() if isinstance(m, SymmetricContraction)]
    assert len(contractions) == 2  # one per block; the last one contracts to scalars only
    assert str(contractions[-1].irreps_out) == "4x0e"


def test_tp_correlation_is_validated():
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match="correlation"):
            _tp(correlation=bad)
    with pytest.raises(ValueError, match="l_max <= 3"):
        _tp(l_max=4, correlation=2)
    with pytest.raises(ValueError, match="sh_l_max must be between l_max"):
        _tp(l_max=2, sh_l_max=1)
    with pytest.raises(ValueError, match="sh_l_max must be between l_max"):
        _tp(l_max=1, sh_l_max=4, correlation=3)


def test_tp_density_can_reach_beyond_the_features_passed_on():
    model = _tp(l_max=1, sh_l_max=3, correlation=3)
    block = model.representation.blocks[0]
    assert str(block.density.irreps_out) == "4x0e+4x1o+4x2e+4x3o"
    assert str(block.product.irreps_out) == "4x0e+4x1o"


def test_tp_with_correlation_round_trips_through_a_model_file(tmp_path):
    from ase.build import molecule

    from ase_eqgnn.checkpoint import load_model, save_model
    from ase_eqgnn.graph import AtomicGraph

    model = _tp(l_max=2, correlation=3).double()
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt").double()
    assert loaded.config["hparams"]["correlation"] == 3
    graph = AtomicGraph.from_atoms(molecule("CH3CH2OH"), dtype=torch.float64).with_neighbors(4.0)
    a, b = model(graph, forces=True), loaded(graph, forces=True)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])


@pytest.mark.parametrize("correlation", [2, 3])
@pytest.mark.parametrize("system", ["periodic", "molecule"])
def test_tp_with_correlation_equals_its_reference_path(correlation, system):
    """The fast layout (fused tensor product) and the reference edge list (e3nn's TensorProduct)
    feed the same body-ordered block: energies, per-atom energies, forces, stress and a force loss's
    parameter gradients agree to float64 round-off."""
    import numpy as np
    from ase import Atoms
    from ase.build import molecule

    from ase_eqgnn import keys
    from ase_eqgnn.graph import AtomicGraph

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds the reference's constants in it
    try:
        if system == "periodic":
            rng = np.random.default_rng(2)
            atoms = Atoms(rng.choice(["H", "C", "O"], 14), positions=rng.uniform(0, 5.5, (14, 3)),
                          cell=[5.5, 5.8, 6.1], pbc=True)
        else:
            atoms = molecule("CH3CH2OH")
            atoms.rattle(0.05, seed=4)
        model = _tp(l_max=1, sh_l_max=2, correlation=correlation).double()
        with torch.no_grad():
            model.scale.fill_(1.3)
        results = []
        for layout in ("auto", "reference"):
            graph = AtomicGraph.from_atoms(atoms, dtype=torch.float64).with_neighbors(model.cutoff)
            model.zero_grad()
            stress = system == "periodic"
            out = model(graph, forces=True, stress=stress, create_graph=True, layout=layout)
            out[keys.FORCES].square().sum().backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            kept = [out[keys.ENERGY], out[keys.ENERGIES], out[keys.FORCES]]
            results.append([t.detach() for t in kept + ([out[keys.STRESS]] if stress else [])]
                           + [grads])
    finally:
        torch.set_default_dtype(previous)
    fast, ref = results
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert fast[2].abs().max() > 1e-3 and fast[-1].abs().max() > 1e-6  # non-trivial
