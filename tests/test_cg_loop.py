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
from ase_eqgnn.cg.forcematch import (cg_frames, check_consistency, force_map_matrix, map_forces,
                                     map_frames)
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
