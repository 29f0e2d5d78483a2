"""Physics of the three model families: derivatives, symmetries, locality, batching, precision."""

import copy
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.fd import calculate_numerical_stress

from ase_eqgnn import keys
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.models import MODEL_NAMES, build_model, default_hparams
from ase_eqgnn.models.blocks import BesselBasis, PolynomialCutoff

CUTOFF = 3.9
SPECIES = [8, 28, 29]  # O, Ni, Cu
VARIANTS = {
    "egnn": dict(features=16, layers=2, n_radial=6),
    "egnn-coords": dict(features=16, layers=3, n_radial=6, coord_update=True),
    "painn": dict(features=16, layers=3, n_radial=6),
    "tp": dict(features=6, layers=3, l_max=2, n_radial=6, radial_hidden=16),
    # body-ordered, MACE's shape: vectors passed between blocks, a density up to l = 2
    "tp-corr3": dict(features=4, layers=2, l_max=1, sh_l_max=2, n_radial=6, radial_hidden=16,
                     correlation=3),
}



def make_model(variant, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    name = variant.split("-")[0]
    model = build_model(name, SPECIES, CUTOFF, **VARIANTS[variant])
    with torch.no_grad():  # non-trivial output statistics so that wrong code shows
        model.scale.fill_(1.7)
        model.shift.fill_(-0.3)
        model.E0.copy_(torch.randn(len(SPECIES)))
    return model.to(dtype)


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request):
    return make_model(request.param)


def cu_cell(seed=1, a=3.6):
    """A perturbed 4-atom fcc Cu cell with one Ni, slightly sheared (triclinic)."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.numbers[1] = 28
    cell = atoms.cell[:] + np.array([[0.0, 0.1, 0.0], [0.05, 0.0, 0.0], [0.0, 0.0, 0.2]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def cluster(seed=2):
    """Non-periodic cluster of 6 atoms (O, Ni, Cu) with distances around 2-3 Å."""
    rng = np.random.default_rng(seed)
    pos = np.array([[0, 0, 0], [2.2, 0, 0], [0, 2.3, 0], [0, 0, 2.1], [2.0, 2.1, 0.3],
                    [1.1, 1.0, 1.9]], dtype=float) + 0.15 * rng.standard_normal((6, 3))
    return Atoms([8, 29, 28, 29, 8, 29], positions=pos)


def graph_of(atoms, model):
    return AtomicGraph.from_atoms(atoms, dtype=model.dtype).with_neighbors(model.cutoff)


def run(model, atoms, **kw):
    out = model(graph_of(atoms, model), **kw)
    return {k: v.detach().numpy() for k, v in out.items()}


def energy(model, atoms):
    return float(run(model, atoms, forces=False)[keys.ENERGY][0])


def random_orthogonal(seed, proper=True):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


# -------------------------------------------------------------------------------------------------
# Derivatives
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("system", ["periodic", "cluster"])
def test_forces_are_minus_energy_gradient(model, system):
    atoms = cu_cell() if system == "periodic" else cluster()
    out = run(model, atoms, forces=True)
    forces = out[keys.FORCES]
    # Random init must give non-trivial forces (the rattled crystal is nearly symmetric: smaller).
    assert np.abs(forces).max() > (1e-4 if system == "periodic" else 1e-3)
    h = 1e-4
    checked = [0, 2, len(atoms) - 1]  # three atoms, all components (keeps the test fast)
    fd = np.zeros((len(checked), 3))
    for row, a in enumerate(checked):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, c] += h
            minus.positions[a, c] -= h
            fd[row, c] = -(energy(model, plus) - energy(model, minus)) / (2 * h)
    err = np.abs(fd - forces[checked]).max() / np.abs(forces[checked]).max()
    assert err < 1e-6, err


class _EnergyOnly(Calculator):
    """Minimal ASE calculator around a model, so ASE's own numerical stress is the reference."""

    implemented_properties = ["energy", "free_energy"]

    def __init__(self, model):
        super().__init__()
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e = energy(self.model, self.atoms)
        self.results = {"energy": e, "free_energy": e}


def test_stress_matches_ase_numerical_stress(model):
    atoms = cu_cell()
    out = run(model, atoms, forces=True, stress=True)
    stress = out[keys.STRESS][0]
    assert stress.shape == (3, 3)
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    probe = atoms.copy()
    probe.calc = _EnergyOnly(model)
    reference = calculate_numerical_stress(probe, eps=1e-5, voigt=False)
    err = np.abs(stress - reference).max() / np.abs(reference).max()
    assert np.abs(reference).max() > 1e-5
    assert err < 1e-6, (err, stress, reference)
    # Virial = -dE/dε = -V σ.
    np.testing.assert_allclose(out[keys.VIRIAL][0], -atoms.get_volume() * stress, rtol=1e-10,
                               atol=1e-12)


def test_stress_is_nan_without_3d_periodicity(model):
    atoms = cu_cell()
    atoms.pbc = [True, True, False]
    out = run(model, atoms, forces=False, stress=True)
    assert np.isnan(out[keys.STRESS]).all()
    assert np.isfinite(out[keys.VIRIAL]).all()


def test_energies_sum_to_energy(model):
    g = AtomicGraph.collate([graph_of(cu_cell(), model), graph_of(cluster(), model)])
    out = model(g)
    per_structure = torch.zeros(2, dtype=model.dtype).index_add_(0, g.batch, out[keys.ENERGIES])
    torch.testing.assert_close(per_structure, out[keys.ENERGY], rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# Symmetries
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
@pytest.mark.parametrize("system", ["periodic", "cluster"])
def test_rotation_and_reflection(model, proper, system):
    atoms = cu_cell() if system == "periodic" else cluster()
    ref = run(model, atoms, forces=True, stress=system == "periodic")
    for seed in range(2):
        q = random_orthogonal(seed, proper)
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.T
        moved.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
        out = run(model, moved, forces=True, stress=system == "periodic")
        np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[keys.ENERGIES], ref[keys.ENERGIES], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES] @ q.T, rtol=1e-9, atol=1e-11)
        if system == "periodic":
            np.testing.assert_allclose(out[keys.STRESS][0], q @ ref[keys.STRESS][0] @ q.T,
                                       rtol=1e-9, atol=1e-11)


def test_translation_permutation_and_lattice_translation(model):
    atoms = cu_cell()
    ref = run(model, atoms)
    # Translation (periodic and not).
    for a in (atoms, cluster()):
        r0 = run(model, a)
        shifted = a.copy()
        shifted.positions += np.array([0.37, -1.21, 2.9])
        r1 = run(model, shifted)
        np.testing.assert_allclose(r1[keys.ENERGY], r0[keys.ENERGY], rtol=1e-12)
        np.testing.assert_allclose(r1[keys.FORCES], r0[keys.FORCES], rtol=1e-9, atol=1e-11)
    # Permutation.
    perm = np.array([2, 0, 3, 1])
    permuted = atoms[perm]
    out = run(model, permuted)
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12)
    np.testing.assert_allclose(out[keys.ENERGIES], ref[keys.ENERGIES][perm], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES][perm], rtol=1e-9, atol=1e-11)
    # One atom moved by a lattice vector.
    moved = atoms.copy()
    moved.positions[2] += atoms.cell[0] - 2 * atoms.cell[2]
    out = run(model, moved, stress=True)
    ref_s = run(model, atoms, stress=True)
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(out[keys.STRESS], ref_s[keys.STRESS], rtol=1e-9, atol=1e-11)


def test_supercell_energy_is_extensive(model):
    atoms = cu_cell()
    big = atoms.repeat((2, 1, 1))
    ref = run(model, atoms, stress=True)
    out = run(model, big, stress=True)
    np.testing.assert_allclose(out[keys.ENERGY], 2 * ref[keys.ENERGY], rtol=1e-11)
    np.testing.assert_allclose(out[keys.FORCES], np.tile(ref[keys.FORCES], (2, 1)), rtol=1e-9,
                               atol=1e-11)
    np.testing.assert_allclose(out[keys.STRESS], ref[keys.STRESS], rtol=1e-9, atol=1e-11)


# -------------------------------------------------------------------------------------------------
# Locality and edge cases
# -------------------------------------------------------------------------------------------------
def test_smooth_across_the_cutoff(model):
    base = np.array([[0.0, 0.0, 0.0], [2.1, 0.3, 0.0], [0.4, 2.0, 0.2]])
    direction = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])

    def at(distance):
        pos = np.vstack([base, base[1] + distance * direction])
        return Atoms([29, 28, 8, 29], positions=pos)

    inside = run(model, at(CUTOFF - 1e-6))
    outside = run(model, at(CUTOFF + 1e-6))
    assert graph_of(at(CUTOFF - 1e-6), model).num_edges == graph_of(at(CUTOFF + 1e-6), model).num_edges + 2
    np.testing.assert_allclose(inside[keys.ENERGY], outside[keys.ENERGY], rtol=0, atol=1e-10)
    np.testing.assert_allclose(inside[keys.FORCES], outside[keys.FORCES], rtol=0, atol=1e-8)


def test_envelope_and_basis_are_smooth():
    env = PolynomialCutoff(5.0, p=6)
    r = torch.tensor([5.0 - 1e-4, 5.0, 5.0 + 1e-4], dtype=torch.float64, requires_grad=True)
    f = env(r)
    (g,) = torch.autograd.grad(f.sum(), r)
    assert float(f.detach().abs().max()) < 1e-12 and float(g.abs().max()) < 1e-7
    assert float(env(torch.zeros(1, dtype=torch.float64))) == 1.0
    basis = BesselBasis(4, 5.0).double()
    b0 = basis(torch.zeros(1, dtype=torch.float64))
    assert torch.isfinite(b0).all()
    torch.testing.assert_close(b0, basis(torch.full((1,), 1e-6, dtype=torch.float64)), rtol=1e-6,
                               atol=0)


def test_zero_edges_and_isolated_atoms(model):
    far = Atoms([29, 8], positions=[[0, 0, 0], [0, 0, 10.0]])
    out = run(model, far, stress=False)
    assert graph_of(far, model).num_edges == 0
    np.testing.assert_array_equal(out[keys.FORCES], 0.0)
    single = run(model, Atoms([29], positions=[[1.0, 2.0, 3.0]]))
    other = run(model, Atoms([8], positions=[[0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(out[keys.ENERGY], single[keys.ENERGY] + other[keys.ENERGY], rtol=1e-12)
    big_cell = Atoms([29], positions=[[0, 0, 0]], cell=np.eye(3) * 12.0, pbc=True)
    res = run(model, big_cell, stress=True)
    np.testing.assert_array_equal(res[keys.STRESS], 0.0)
    # A batch where one structure has edges and one has none.
    g = AtomicGraph.collate([graph_of(far, model), graph_of(cluster(), model)])
    assert model(g)[keys.ENERGY].shape == (2,)


def test_batch_equals_separate_evaluations(model):
    a, b = cu_cell(), cluster()
    ra, rb = run(model, a, stress=True), run(model, b, stress=True)
    g = AtomicGraph.collate([graph_of(a, model), graph_of(b, model), graph_of(a, model)])
    out = {k: v.detach().numpy() for k, v in model(g, stress=True).items()}
    np.testing.assert_allclose(out[keys.ENERGY], [ra[keys.ENERGY][0], rb[keys.ENERGY][0],
                                                  ra[keys.ENERGY][0]], rtol=1e-12)
    np.testing.assert_allclose(out[keys.FORCES], np.vstack([ra[keys.FORCES], rb[keys.FORCES],
                                                            ra[keys.FORCES]]), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(out[keys.STRESS][0], ra[keys.STRESS][0], rtol=1e-9, atol=1e-12)
    assert np.isnan(out[keys.STRESS][1]).all()


def test_float32_matches_float64(model):
    atoms = cu_cell()
    m32 = copy.deepcopy(model).to(torch.float32)
    r64, r32 = run(model, atoms, stress=True), run(m32, atoms, stress=True)
    assert r32[keys.ENERGY].dtype == np.float32
    np.testing.assert_allclose(r32[keys.ENERGY], r64[keys.ENERGY], rtol=1e-4)
    scale = np.abs(r64[keys.FORCES]).max()
    assert np.abs(r32[keys.FORCES] - r64[keys.FORCES]).max() < 1e-3 * scale
    # float64 inputs are cast to the model's dtype.
    out = m32(AtomicGraph.from_atoms(atoms, dtype=torch.float64).with_neighbors(CUTOFF))
    assert out[keys.ENERGY].dtype == torch.float32


def test_unknown_element_is_named(model):
    atoms = Atoms([29, 1], positions=[[0, 0, 0], [0, 0, 1.5]])
    with pytest.raises(ValueError, match=r"H \(Z=1\).*Cu"):
        model(graph_of(atoms, model))


def test_forces_under_no_grad_and_create_graph(model):
    g = graph_of(cu_cell(), model)
    with torch.no_grad():
        out = model(g, forces=True)
    assert not out[keys.FORCES].requires_grad and out[keys.FORCES].abs().max() > 1e-4
    model.zero_grad()
    out = model(g, forces=True, stress=True, create_graph=True)
    loss = out[keys.FORCES].square().sum() + out[keys.STRESS].square().sum() + out[keys.ENERGY].sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    model.zero_grad()


def test_missing_neighbor_list_is_an_error(model):
    with pytest.raises(ValueError, match="with_neighbors"):
        model(AtomicGraph.from_atoms(cu_cell(), dtype=model.dtype))


# -------------------------------------------------------------------------------------------------
# Registry
# -------------------------------------------------------------------------------------------------
def test_registry_validation():
    assert set(MODEL_NAMES) == {"egnn", "painn", "tp"}
    with pytest.raises(ValueError, match="valid models: egnn, painn, tp"):
        build_model("schnet", [29], 5.0)
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) lmax .*valid: .*l_max"):
        build_model("tp", [29], 5.0, lmax=1)
    with pytest.raises(ValueError, match="features"):
        build_model("painn", [29], 5.0, features=0)
    with pytest.raises(ValueError, match="cutoff"):
        build_model("painn", [29], -1.0)
    with pytest.raises(ValueError, match="twice"):
        build_model("egnn", [29, "Cu"], 5.0)
    with pytest.raises(ValueError, match="Xx"):
        build_model("egnn", ["Xx"], 5.0)
    with pytest.raises(ValueError, match="coord_update"):
        build_model("egnn", [29], 5.0, coord_update="yes")


@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
def test_config_rebuilds_the_same_architecture(name):
    small = {"egnn": dict(features=8, layers=1), "painn": dict(features=8, layers=1),
             "tp": dict(features=4, layers=2, l_max=1)}[name]
    model = build_model(name, ["Cu", "O"], 4.5, **small)
    config = model.config
    assert config["species"] == [8, 29] and config["cutoff"] == 4.5 and config["name"] == name
    assert set(config["hparams"]) == set(default_hparams(name))
    assert isinstance(config["hparams"]["head_hidden"], int)
    import json
    rebuilt = build_model(**json.loads(json.dumps(config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.E0.shape == (2,) and rebuilt.scale.shape == () and rebuilt.shift.shape == ()
    assert math.isclose(rebuilt.cutoff, 4.5)
