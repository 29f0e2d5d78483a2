"""Tests of the coarse-grained loop's data, physics and analysis (issue 19, phase 1):
force matching (ase_eqgnn.cg.forcematch), bead Atoms (cg.beads), priors (cg.priors) and the
Ramachandran analysis (cg.ramachandran)."""

from __future__ import annotations

import math
from pathlib import Path

import ase.io
import mdtraj as md
import numpy as np
import pytest
import torch
from ase import units

from ase_eqgnn.cg.beads import BeadSet, beads_to_atoms
from ase_eqgnn.cg.forcematch import (CGDataset, cg_frames, check_consistency, force_map_matrix,
                                     load_cg_dataset, map_forces, map_frames, save_cg_dataset)
from ase_eqgnn.cg.maps import CGMap, ala2_five_bead_map, named_atoms_map, residue_map
from ase_eqgnn.cg.priors import CGPrior, bond_angles, bond_lengths, chain_terms
from ase_eqgnn.cg import ramachandran as rama
from ase_eqgnn.data import Frame, read_dataset
from ase_eqgnn.structures import structure_path

ROOT = Path(__file__).resolve().parents[1]
ALA2_TEST = ROOT / "training/data/ala2_test.h5"


@pytest.fixture(scope="module")
def ala2_frames():
    return read_dataset(ALA2_TEST, energies=ALA2_TEST.with_suffix(".npz"), index="::10")


@pytest.fixture(scope="module")
def ala2_top():
    return md.load(str(structure_path("ala2"))).topology


# -- force matching -----------------------------------------------------------------------------
def _toy_map(kind):
    """6 atoms, 3 beads: {0, 1}, {2, 3, 4}, {5}; anchors 1, 2, 5; masses 1, 3, 2, 2, 4, 7."""
    return CGMap([0, 0, 1, 1, 1, 2], kind=kind, anchors=[1, 2, 5], masses=[1, 3, 2, 2, 4, 7])


@pytest.mark.parametrize("kind", ["anchor", "com", "cog"])
def test_force_matching_toy_map_by_hand(kind):
    rng = np.random.default_rng(0)
    x, f = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    cg = _toy_map(kind)
    # positions, written out by hand for each kind
    if kind == "anchor":
        expected_x = np.stack([x[1], x[2], x[5]])
    elif kind == "com":
        expected_x = np.stack([(1 * x[0] + 3 * x[1]) / 4, (2 * x[2] + 2 * x[3] + 4 * x[4]) / 8, x[5]])
    else:
        expected_x = np.stack([(x[0] + x[1]) / 2, (x[2] + x[3] + x[4]) / 3, x[5]])
    # forces: the sum over each bead's atoms, whatever the kind
    expected_f = np.stack([f[0] + f[1], f[2] + f[3] + f[4], f[5]])
    np.testing.assert_allclose(cg.bead_positions(x), expected_x, atol=1e-14)
    np.testing.assert_allclose(map_forces(f, cg), expected_f, atol=1e-14)
    np.testing.assert_allclose(map_forces(torch.as_tensor(f[None]), cg)[0].numpy(), expected_f, atol=1e-14)
    check_consistency(cg)  # sum_i c_Ii d_Ji = delta_IJ
    np.testing.assert_allclose(cg.weights() @ force_map_matrix(cg).T, np.eye(3), atol=1e-15)


def test_force_matching_mean_force_of_a_harmonic_toy_system():
    """Two atoms in one bead (cog) in a harmonic well each, plus a third atom that is its own bead:
    the mapped force, averaged over the atoms' conditional distribution at fixed bead positions,
    is -dW/dX of the analytic free energy W(X) = (k1 k2 / (k1 + k2)) |2 X|^2 / 2 for the cog bead
    (atoms at x1, x2 with U = k1 x1^2 / 2 + k2 x2^2 / 2, X = (x1 + x2) / 2)."""
    k1, k2, kT = 2.0, 5.0, 0.3
    rng = np.random.default_rng(1)
    cg = CGMap([0, 0, 1], kind="cog")
    X0 = np.array([0.4, -0.2, 0.1])
    # at fixed X, x1 = X + s, x2 = X - s with s Gaussian: U(s) = k1 (X+s)^2/2 + k2 (X-s)^2/2
    s_mean = (k2 - k1) / (k1 + k2) * X0
    s = s_mean + rng.normal(scale=math.sqrt(kT / (k1 + k2)), size=(200_000, 3))
    x1, x2 = X0 + s, X0 - s
    forces = np.stack([-k1 * x1, -k2 * x2, np.zeros_like(x1)], axis=1)
    mean_force = map_forces(forces, cg).mean(0)[0]
    expected = -4 * k1 * k2 / (k1 + k2) * X0  # W = (4 k1 k2 / (k1 + k2)) X^2 / 2
    np.testing.assert_allclose(mean_force, expected, atol=0.01)


def test_map_frames_on_openmm_ala2(ala2_frames, ala2_top):
    cg = ala2_five_bead_map(ala2_top)
    X, F = map_frames(ala2_frames, cg)
    assert X.shape == F.shape == (len(ala2_frames), 5, 3)
    x = np.stack([f.positions for f in ala2_frames])
    f = np.stack([f.forces for f in ala2_frames])
    np.testing.assert_allclose(X, x[:, cg.anchors], atol=1e-12)  # beads sit on the anchor atoms
    # summing keeps the total force (zero for an isolated molecule, up to float32 storage)
    np.testing.assert_allclose(F.sum(1), f.sum(1), atol=1e-9)
    assert np.abs(F.sum(1)).max() < 1e-3 * np.abs(F).max()
    # and by hand for bead 1 (ALA N + H)
    n, h = (a.index for a in ala2_top.atoms if a.residue.name == "ALA" and a.name in ("N", "H"))
    np.testing.assert_allclose(F[:, 1], f[:, n] + f[:, h], atol=1e-12)


def test_cg_frames_round_trip_through_extxyz(ala2_frames, ala2_top, tmp_path):
    cg = ala2_five_bead_map(ala2_top)
    frames = cg_frames(ala2_frames[:7], cg)
    assert all(fr.energy is None and fr.numbers.tolist() == [1, 2, 3, 4, 5] for fr in frames)
    ase.io.write(tmp_path / "cg.extxyz", [fr.to_atoms() for fr in frames])
    back = read_dataset(tmp_path / "cg.extxyz")
    for a, b in zip(frames, back):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-6)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-6)
        assert b.numbers.tolist() == a.numbers.tolist()


def test_map_frames_rejects_bad_input(ala2_frames, ala2_top):
    cg = ala2_five_bead_map(ala2_top)
    no_forces = [Frame(positions=ala2_frames[0].positions, numbers=ala2_frames[0].numbers)]
    with pytest.raises(ValueError, match="no forces"):
        map_frames(no_forces, cg)
    with pytest.raises(ValueError, match="atoms"):
        map_frames(ala2_frames[:2], CGMap([0, 0, 1], kind="cog"))
    with pytest.raises(ValueError, match="no frames"):
        map_frames([], cg)


def test_cg_dataset_file_round_trip(ala2_frames, ala2_top, tmp_path):
    cg = ala2_five_bead_map(ala2_top)
    X, F = map_frames(ala2_frames, cg)
    beads = BeadSet.from_map(cg, ala2_frames[0].numbers)
    data = CGDataset(X, F, cg, beads, 300.0, extra={"run": np.arange(len(X)) % 2})
    path = save_cg_dataset(tmp_path / "cg.npz", data)
    back = load_cg_dataset(path)
    assert back.cg_map == cg and back.beads == beads and back.temperature_K == 300.0
    np.testing.assert_allclose(back.positions, X, rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(back.forces, F, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(back.extra["run"], data.extra["run"])
    frames = back.to_frames()
    assert len(frames) == len(X) and frames[0].numbers.tolist() == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cg.npz"]
    np.savez(tmp_path / "other.npz", positions=X)
    with pytest.raises(ValueError, match="missing"):
        load_cg_dataset(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="readable"):
        load_cg_dataset(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="temperature"):
        CGDataset(X, F, cg, beads, -1.0)


# -- beads as Atoms -----------------------------------------------------------------------------
def test_bead_set_encoding_masses_and_file_round_trip(ala2_top, tmp_path):
    z = [a.element.atomic_number for a in ala2_top.atoms]
    cg = ala2_five_bead_map(ala2_top)
    beads = BeadSet.from_map(cg, z)
    assert beads.numbers.tolist() == [1, 2, 3, 4, 5]
    from ase.data import atomic_masses
    for b in range(5):
        assert beads.masses[b] == pytest.approx(sum(atomic_masses[z[a]] for a in cg.atoms_of(b)))
    assert beads.masses.sum() == pytest.approx(sum(atomic_masses[z]))
    x = np.random.default_rng(0).normal(size=(5, 3)) * 3
    atoms = beads_to_atoms(beads, x)
    for name in ("beads.extxyz", "beads.traj"):
        ase.io.write(tmp_path / name, atoms)
        back = ase.io.read(tmp_path / name)
        assert back.numbers.tolist() == atoms.numbers.tolist()
        np.testing.assert_allclose(back.get_masses(), beads.masses)
        np.testing.assert_allclose(back.positions, x, atol=1e-8)
    assert BeadSet.from_dict(beads.to_dict()) == beads


def test_bead_types_shared_between_beads_are_one_species(ala2_top):
    cg = residue_map(ala2_top)  # ACE, ALA, NME
    cg.types = ["cap", "ALA", "cap"]
    beads = BeadSet.from_map(cg, [a.element.atomic_number for a in ala2_top.atoms])
    assert beads.numbers.tolist() == [1, 2, 1]
    assert beads.type_names == ["cap", "ALA"]
    with pytest.raises(ValueError, match="shape"):
        beads_to_atoms(beads, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="finite"):
        beads_to_atoms(beads, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="atomic numbers"):
        BeadSet.from_map(cg, [1, 2])


# -- priors -------------------------------------------------------------------------------------
def _chain_prior(dtype=torch.float64):
    rng = np.random.default_rng(3)
    n = 6
    base = np.cumsum(rng.normal(size=(n, 3)) * 0.4 + np.array([1.3, 0.0, 0.0]), axis=0)
    data = base[None] + rng.normal(scale=0.08, size=(500, n, 3))
    return CGPrior.fit(data, 300.0).to(dtype), torch.as_tensor(base, dtype=dtype)


def test_chain_terms():
    bonds, angles, pairs = chain_terms(5)
    assert bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert angles.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert pairs.tolist() == [[0, 3], [0, 4], [1, 4]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prior_forces_are_minus_the_energy_gradient(dtype):
    prior, x = _chain_prior(dtype)
    x = x + 0.1 * torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    batch = torch.stack([x, x.flip(0), x * 1.02])  # three structures of one molecule
    energy, forces = prior.energy_and_forces(batch)
    assert energy.shape == (3,) and forces.shape == (3, 6, 3) and forces.dtype == dtype
    # central finite differences in float64 of the same constants
    p64, xs = prior.double(), batch.double()
    h = 1e-5
    fd = torch.zeros_like(xs)
    for s in range(3):
        for i in range(6):
            for c in range(3):
                d = torch.zeros_like(xs[s])
                d[i, c] = h
                fd[s, i, c] = -(p64(xs[s] + d) - p64(xs[s] - d)) / (2 * h)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(forces.double(), fd, atol=tol * fd.abs().max().item(), rtol=0)
    # every term contributes, and the energy is invariant under rotation and translation
    assert all(v.abs().min() > 0 for v in prior.double().terms(xs).values())
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(p64(xs @ q.T + 3.0), p64(xs), atol=1e-10, rtol=1e-10)


def _sample_harmonic_chain(n_frames, r0, sd_r, theta0_deg, sd_theta_deg, rng):
    """4-bead chains whose bond lengths and bond angles are Gaussian (independent) with the given
    means / spreads and whose dihedral is uniform: a synthetic harmonic ensemble."""
    r = rng.normal(r0, sd_r, size=(n_frames, 3))
    theta = np.radians(rng.normal(theta0_deg, sd_theta_deg, size=(n_frames, 2)))
    dih = rng.uniform(-np.pi, np.pi, size=n_frames)
    x = np.zeros((n_frames, 4, 3))
    x[:, 1, 0] = r[:, 0]
    x[:, 2] = x[:, 1] + r[:, 1, None] * np.stack([-np.cos(theta[:, 0]), np.sin(theta[:, 0]),
                                                  np.zeros(n_frames)], 1)
    # place bead 3 with bond angle theta[:, 1] at bead 2 and dihedral dih (natural extension frame)
    b1, b2 = x[:, 1] - x[:, 0], x[:, 2] - x[:, 1]
    e2 = b2 / np.linalg.norm(b2, axis=1, keepdims=True)
    n = np.cross(b1, e2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    m = np.cross(n, e2)
    t = np.pi - theta[:, 1]
    d = np.stack([np.cos(t), np.sin(t) * np.cos(dih), np.sin(t) * np.sin(dih)], 1)
    x[:, 3] = x[:, 2] + r[:, 2, None] * (d[:, :1] * e2 + d[:, 1:2] * m + d[:, 2:] * n)
    # a random rigid motion per frame: the fit must not care
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return x @ q.T + rng.normal(size=(n_frames, 1, 3)), r, np.degrees(theta)


def test_prior_fit_recovers_a_synthetic_harmonic_ensemble():
    rng = np.random.default_rng(7)
    temperature = 350.0
    x, r, theta = _sample_harmonic_chain(20_000, 1.45, 0.04, 112.0, 5.0, rng)
    prior = CGPrior.fit(x, temperature)
    kT = units.kB * temperature
    # bond and angle values of the samples were measured correctly
    xt = torch.as_tensor(x)
    np.testing.assert_allclose(bond_lengths(xt, prior.bonds).numpy(), r, atol=1e-9)
    np.testing.assert_allclose(np.degrees(bond_angles(xt, prior.angles).numpy()), theta, atol=1e-7)
    # Boltzmann inversion: mean and variance of each coordinate give back r0 and kT / var
    np.testing.assert_allclose(prior.r0.numpy(), 1.45, atol=0.002)
    np.testing.assert_allclose(prior.k_bond.numpy(), kT / 0.04**2, rtol=0.05)
    np.testing.assert_allclose(np.degrees(prior.theta0.numpy()), 112.0, atol=0.3)
    np.testing.assert_allclose(prior.k_angle.numpy(), kT / np.radians(5.0) ** 2, rtol=0.05)
    # the repulsion's sigma is the closest 1-4 approach of the data, and costs kT there
    d14 = np.linalg.norm(x[:, 3] - x[:, 0], axis=1)
    assert prior.sigma.item() == pytest.approx(d14.min())
    assert prior.epsilon == pytest.approx(kT)
    # the fitted prior's own Boltzmann ensemble (Metropolis Monte Carlo in Cartesian space, which
    # includes the r^2 and sin(theta) Jacobians the fit neglects) reproduces the data's bond and
    # angle means and spreads
    xs = _metropolis(prior, xt[:2000].clone(), kT, steps=600, step=0.025, seed=0)
    r_mc, th_mc = bond_lengths(xs, prior.bonds), torch.rad2deg(bond_angles(xs, prior.angles))
    np.testing.assert_allclose(r_mc.mean(0).numpy(), r.mean(0), atol=0.006)
    np.testing.assert_allclose(r_mc.std(0).numpy(), r.std(0), rtol=0.08)
    np.testing.assert_allclose(th_mc.mean(0).numpy(), theta.mean(0), atol=0.6)
    np.testing.assert_allclose(th_mc.std(0).numpy(), theta.std(0), rtol=0.08)


def _metropolis(prior, x, kT, steps, step, seed):
    """Independent Metropolis chains, one per structure of ``x`` [chains, n, 3]."""
    g = torch.Generator().manual_seed(seed)
    e = prior(x)
    for _ in range(steps):
        trial = x + step * torch.randn(x.shape, generator=g, dtype=x.dtype)
        e_trial = prior(trial)
        accept = torch.rand(e.shape, generator=g, dtype=x.dtype) < torch.exp(-(e_trial - e) / kT)
        x = torch.where(accept[:, None, None], trial, x)
        e = torch.where(accept, e_trial, e)
    return x


def test_prior_round_trip_device_and_bad_input():
    prior, x = _chain_prior()
    again = CGPrior.from_dict(prior.to_dict())
    torch.testing.assert_close(again(x), prior(x))
    assert again.temperature_K == 300.0
    with pytest.raises(ValueError, match="keys"):
        CGPrior.from_dict({**prior.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="positive"):
        CGPrior.from_dict({**prior.to_dict(), "k_bond": [-1.0] * 5})
    with pytest.raises(ValueError, match="shape"):
        prior(x[:4])
    with pytest.raises(ValueError, match="fluctuate"):
        CGPrior.fit(np.repeat(x.numpy()[None], 3, axis=0), 300.0)
    with pytest.raises(ValueError, match="temperature"):
        CGPrior.fit(x.numpy()[None].repeat(3, 0) + np.random.default_rng(0).normal(size=(3, 6, 3)), 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prior_on_cuda_matches_cpu():
    prior, x = _chain_prior(torch.float32)
    e_cpu, f_cpu = prior.energy_and_forces(x)
    e_gpu, f_gpu = prior.cuda().energy_and_forces(x.cuda())
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f_gpu.cpu(), f_cpu, rtol=1e-4, atol=1e-5)


# -- Ramachandran analysis ----------------------------------------------------------------------
def _four_points(dihedral_deg):
    """a, b, c, d with a right angle at b and c and the given dihedral a-b-c-d (IUPAC sign: looking
    along b -> c, positive when a turns clockwise onto d)."""
    t = np.radians(dihedral_deg)
    return np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [np.cos(t), np.sin(t), 1.5]])


@pytest.mark.parametrize("angle", [-179.0, -120.0, -60.0, 0.0, 45.0, 90.0, 179.5])
def test_dihedral_known_values(angle):
    assert rama.dihedrals(_four_points(angle), [[0, 1, 2, 3]])[0] == pytest.approx(angle, abs=1e-9)
    # same convention as mdtraj
    top = md.Topology()
    residue = top.add_residue("X", top.add_chain())
    for k in range(4):
        top.add_atom(f"C{k}", md.element.carbon, residue)
    traj = md.Trajectory(_four_points(angle)[None] / 10.0, top)
    assert np.degrees(md.compute_dihedrals(traj, [[0, 1, 2, 3]]))[0, 0] == pytest.approx(angle, abs=1e-4)


def test_bead_phi_psi_equal_all_atom_phi_psi(ala2_frames, ala2_top):
    cg = ala2_five_bead_map(ala2_top)
    x = np.stack([f.positions for f in ala2_frames])
    phi, psi = rama.bead_phi_psi(cg.bead_positions(x))
    traj = md.Trajectory(x / 10.0, ala2_top)
    _, phi_aa = md.compute_phi(traj)
    _, psi_aa = md.compute_psi(traj)
    np.testing.assert_allclose(rama.angle_difference(phi, np.degrees(phi_aa[:, 0])), 0, atol=1e-3)
    np.testing.assert_allclose(rama.angle_difference(psi, np.degrees(psi_aa[:, 0])), 0, atol=1e-3)
    agreement = rama.dihedral_agreement(phi, psi, np.degrees(phi_aa[:, 0]), np.degrees(psi_aa[:, 0]))
    assert agreement["fraction_within"] == 1.0 and agreement["phi_max_abs_deg"] < 1e-3


def test_basins_partition_the_plane():
    phi = np.array([-70, -70, -150, 60, 60, 0, 119.9, 120, 179.9, -179.9, -70, -70, 180])
    psi = np.array([140, -40, 160, 40, -70, 0, 100, 0, 170, -170, 50, -150, 150])
    want = ["beta", "alphaR", "beta", "alphaL", "alphaL", "alphaL", "alphaL", "alphaR", "beta",
            "beta", "beta", "alphaR", "beta"]
    assert [rama.BASINS[k] for k in rama.basin_labels(phi, psi)] == want
    pop = rama.populations(phi, psi)
    assert sum(pop.values()) == pytest.approx(1.0)
    assert pop["alphaL"] == pytest.approx(4 / 13) and pop["beta"] == pytest.approx(6 / 13)
    with pytest.raises(ValueError, match="finite"):
        rama.populations([np.nan], [0.0])


def test_histogram_bins_and_wrapping():
    h = rama.histogram([-180, -151, 179.9, 180, 0, -0.1], [-180, -180, 179.9, 10, 0, 29.9])
    assert h.shape == (12, 12) and h.sum() == pytest.approx(1.0)
    counts = np.rint(h * 6).astype(int)
    assert counts[0, 0] == 2          # -180 and -151 share the first 30-degree bin
    assert counts[11, 11] == 1        # 179.9
    assert counts[0, 6] == 1          # phi = +180 is phi = -180
    assert counts[6, 6] == 1 and counts[5, 6] == 1
    assert rama.histogram([0], [0], bin_deg=10).shape == (36, 36)
    with pytest.raises(ValueError, match="divide"):
        rama.histogram([0], [0], bin_deg=7)


def test_js_divergence_known_values_and_scipy():
    scipy_distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(0)
    p, q = rng.random((12, 12)), rng.random((12, 12))
    q[3] = 0.0  # empty bins are allowed
    assert rama.js_divergence(p, q) == pytest.approx(scipy_distance.jensenshannon(p.ravel(), q.ravel()) ** 2)
    assert rama.js_divergence(p, q) == pytest.approx(rama.js_divergence(q, p))
    assert rama.js_divergence(p, 3 * p) == pytest.approx(0.0, abs=1e-15)
    disjoint = np.zeros((2, 2))
    disjoint[0, 0] = 1
    assert rama.js_divergence(disjoint, disjoint[::-1]) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="shape"):
        rama.js_divergence(p, q[:6])


def test_compare_surfaces_and_agreement_with_noise():
    rng = np.random.default_rng(2)
    n = 4000
    ref_phi = np.where(rng.random(n) < 0.6, -75, -70) + rng.normal(0, 12, n)
    ref_psi = np.where(rng.random(n) < 0.6, 150, -40) + rng.normal(0, 12, n)
    ref_phi[:200], ref_psi[:200] = 60 + rng.normal(0, 8, 200), 40 + rng.normal(0, 8, 200)  # 5 % alphaL
    same = rama.compare_surfaces(ref_phi[::-1], ref_psi[::-1], ref_phi, ref_psi)
    assert same["js_divergence"] == pytest.approx(0.0, abs=1e-12)
    assert same["max_population_difference_points"] == pytest.approx(0.0) and not same["unvisited_basins"]
    run = rama.compare_surfaces(ref_phi[200:], ref_psi[200:], ref_phi, ref_psi)  # no alphaL frames
    assert run["unvisited_basins"] == ["alphaL"]
    assert run["max_population_difference_points"] == pytest.approx(5.0)
    assert run["js_divergence"] > 0.01
    # circular differences of back-mapped vs bead angles
    noisy = rama.angle_difference(ref_phi + rng.normal(0, 3, n), -360.0)  # wraps, same angle
    agreement = rama.dihedral_agreement(noisy, ref_psi, ref_phi, ref_psi, tolerance_deg=10)
    assert 2.0 < agreement["phi_mean_abs_deg"] < 3.0 and agreement["psi_max_abs_deg"] < 1e-9
    assert agreement["fraction_within"] > 0.99
    assert rama.angle_difference(179.0, -179.0) == pytest.approx(-2.0)


def test_plot_side_by_side_writes_only_its_file(tmp_path):
    rng = np.random.default_rng(0)
    surfaces = {"reference": (rng.uniform(-180, 180, 500), rng.uniform(-180, 180, 500)),
                "CG MD": (rng.normal(-70, 20, 500), rng.normal(140, 20, 500))}
    out = rama.plot_side_by_side(surfaces, tmp_path / "rama.png", temperature_K=300.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rama.png"]
    with pytest.raises(ValueError, match="does not exist"):
        rama.plot_side_by_side(surfaces, tmp_path / "missing" / "rama.png")


# -- the reference builder (training/ala2_cg_reference.py) --------------------------------------
def test_reference_builder_on_the_shipped_openmm_runs(tmp_path):
    """Two independent OpenMM runs (the shipped train and test sets) through the builder: the
    populations and histogram equal those of mdtraj's all-atom phi/psi, the halves are the runs,
    and the dataset holds the mapped forces."""
    import json
    import subprocess
    import sys

    runs = [ROOT / "training/data/ala2_train", ROOT / "training/data/ala2_test"]
    out = subprocess.run([sys.executable, str(ROOT / "training/ala2_cg_reference.py"), "--runs",
                          *map(str, runs), "--dataset", str(tmp_path / "cg.npz"), "--reference",
                          str(tmp_path / "ref.json"), "--every", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ref = json.loads((tmp_path / "ref.json").read_text())
    angles = []
    for run in runs:
        traj = md.load(str(run.with_suffix(".h5")))
        angles.append((np.degrees(md.compute_phi(traj)[1][:, 0]), np.degrees(md.compute_psi(traj)[1][:, 0])))
    phi, psi = (np.concatenate(a) for a in zip(*angles))
    assert ref["frames"] == len(phi) == 3000 and ref["simulated_ns"] == pytest.approx(0.6)
    for basin, value in rama.populations(phi, psi).items():
        assert ref["populations"][basin] == pytest.approx(value)
        for half, (a, b) in zip("AB", angles):
            assert ref["halves_by_runs"][half]["populations"][basin] == pytest.approx(rama.populations(a, b)[basin])
    np.testing.assert_allclose(ref["histogram"], rama.histogram(phi, psi), atol=1e-8)
    data = load_cg_dataset(tmp_path / "cg.npz")
    assert len(data) == 600 and data.temperature_K == 300.0 and sorted(set(data.extra["run"])) == [1, 2]
    npz = np.load(runs[0].with_suffix(".npz"))
    ca_bead = [a.index for a in md.load_frame(str(runs[0].with_suffix(".h5")), 0).topology.atoms
               if a.residue.name == "ALA" and a.name in ("CA", "HA", "CB", "HB1", "HB2", "HB3")]
    np.testing.assert_allclose(data.forces[:500, 2], npz["forces"][::5][:, ca_bead].sum(1), rtol=1e-5, atol=1e-5)
    assert np.abs(rama.angle_difference(data.extra["phi"], phi[np.r_[0:2500:5, 2500:3000:5]])).max() < 1e-3


def test_shipped_cg_dataset_and_reference_agree():
    """The shipped CG set and (phi, psi) reference are consistent with each other and with physics:
    stored angles are those of the stored beads, the mapped forces of an isolated molecule sum to
    zero, the reference's halves and totals are the frame-weighted means of its runs."""
    import json

    data = load_cg_dataset(ROOT / "training/data/ala2_cg_5bead.npz")
    ref = json.loads((ROOT / "training/data/ala2_rama_reference.json").read_text())
    assert data.temperature_K == ref["temperature_K"] == 300.0
    assert data.beads.numbers.tolist() == [1, 2, 3, 4, 5] and ref["simulated_ns"] >= 1.0
    phi, psi = rama.bead_phi_psi(data.positions)
    assert np.abs(rama.angle_difference(phi, data.extra["phi"])).max() < 1e-2
    assert np.abs(rama.angle_difference(psi, data.extra["psi"])).max() < 1e-2
    assert np.abs(data.forces.sum(1)).max() < 1e-3 * np.abs(data.forces).max()
    assert rama.js_divergence(rama.histogram(phi, psi), np.array(ref["histogram"])) < 0.005
    runs = {r["seed"]: r for r in ref["per_run"]}
    assert sorted(runs) == sorted(set(data.extra["run"].tolist()))
    for basin in rama.BASINS:
        for half in ("A", "B"):
            group = [runs[s] for s in ref["halves_by_runs"][half]["seeds"]]
            mean = sum(r["frames"] * r["populations"][basin] for r in group) / sum(r["frames"] for r in group)
            assert ref["halves_by_runs"][half]["populations"][basin] == pytest.approx(mean)
        total = sum(r["frames"] * r["populations"][basin] for r in runs.values()) / ref["frames"]
        assert ref["populations"][basin] == pytest.approx(total)
        assert abs(rama.populations(phi, psi)[basin] - ref["populations"][basin]) < 0.01
