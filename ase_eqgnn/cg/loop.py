"""The coarse-grained loop's steps after training: CG MD on beads, back-mapping, and what to report.

Used by ``eqgnn-cg`` and ``benchmarks/cg_loop.py``:

- :func:`run_cg_md`: Langevin MD of a bead ``Atoms`` (with a CG calculator) at a temperature;
  returns the frames every ``interval`` steps and the speed;
- :func:`run_replicas`: many independent Langevin copies of one CG molecule integrated together
  (BAOAB, one batched model call per step): the way to sample a free-energy surface on a CPU;
- :func:`backmap_report`: back-maps bead frames with a :class:`~.backmap.BackMapper` and measures
  the all-atom ensemble: the fraction of structures whose bond graph (bonds by covalent radii) is
  the topology's (``valid_ratio``), the fraction with a clash (heavy atoms more than three bonds
  apart closer than 2 Å, :mod:`.metrics`), and, for the alanine-dipeptide 5-bead map, how far the
  back-mapped heavy-atom phi/psi lie from the beads' (the same atoms: they should agree);
- :func:`fes_report`: bead (phi, psi) of a run against a reference (angles or histogram):
  populations of the basins of :mod:`.ramachandran`, the JS divergence on 30° bins, and the
  issue's targets (every basin with >= 1 % of the reference visited, populations within 10
  points, JS <= 0.05).

Example::

    >>> from ase_eqgnn import EqGNNCalculator
    >>> atoms = beads_to_atoms("ala2-cg", x)                               # doctest: +SKIP
    >>> frames, speed = run_cg_md(atoms, EqGNNCalculator.from_pretrained("ala2-cg"), 300.0,
    ...                           timestep_fs=4.0, steps=1000, interval=10)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Dict, Optional, Tuple

import numpy as np

from . import ramachandran as rama

__all__ = ["run_cg_md", "run_replicas", "backmap_report", "fes_report", "TARGETS", "is_ala2_five_bead"]

TARGETS = {"basin_threshold": 0.01, "max_population_difference_points": 10.0, "js_divergence": 0.05,
           "valid_ratio": 0.98}


def run_cg_md(atoms, calc, temperature_K: float, timestep_fs: float, steps: int, interval: int,
              seed: int = 0, friction_per_fs: float = 0.01, on_frame=None) -> Tuple[np.ndarray, Dict]:
    """Langevin MD of ``atoms`` (modified) with ``calc``; bead frames [steps // interval, n, 3] (Å,
    after each ``interval`` steps) and ``{"steps", "timestep_fs", "wall_s", "steps_per_s",
    "ns_per_day", "temperature_mean_K"}``. ``on_frame(atoms)`` is called for every frame kept."""
    from ..simulate import langevin_nvt, thermalize

    atoms.calc = calc
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K, rng)
    dyn = langevin_nvt(atoms, timestep_fs, temperature_K, friction_per_fs, rng)
    frames, temperatures = [], []
    t0 = time.perf_counter()
    for _ in range(steps // interval):
        dyn.run(interval)
        frames.append(atoms.get_positions().copy())
        temperatures.append(atoms.get_temperature())
        if on_frame is not None:
            on_frame(atoms)
    wall = time.perf_counter() - t0
    done = len(frames) * interval
    rate = done / wall if wall > 0 else float("nan")
    return np.array(frames).reshape(-1, len(atoms), 3), {
        "steps": done, "timestep_fs": timestep_fs, "wall_s": wall, "steps_per_s": rate,
        "ns_per_day": rate * timestep_fs * 86400e-6,
        "temperature_mean_K": float(np.mean(temperatures)) if temperatures else float("nan")}


def run_replicas(model, start: np.ndarray, temperature_K: float, timestep_fs: float, steps: int,
                 replicas: int, interval: int, seed: int = 0, friction_per_fs: float = 0.01,
                 dtype=None) -> Tuple[np.ndarray, Dict]:
    """Langevin dynamics (BAOAB, Leimkuhler & Matthews 2013) of ``replicas`` independent copies of
    a CG molecule, all from the bead positions ``start`` [n, 3] (Å) with Maxwell-Boltzmann
    velocities, evaluated together by ``model`` (a :class:`~.potential.CGPotential`; masses its
    beads'). Returns frames [steps // interval, replicas, n, 3] (Å) and the speed
    (``replica_steps_per_s``: steps of one molecule per second of this run)::

        v += dt/2 F/m;  x += dt/2 v;  v = c v + sqrt((1 - c^2) kT/m) xi;  x += dt/2 v;
        F = F(x);  v += dt/2 F/m            (c = exp(-friction dt))
    """
    import torch
    from ase import units

    from ..graph import AtomicGraph
    from ..keys import FORCES

    dtype = dtype or model.dtype
    n = model.beads.n_beads
    gen = torch.Generator().manual_seed(int(seed))
    mass = torch.as_tensor(np.tile(model.beads.masses, replicas), dtype=dtype)[:, None]
    kT = units.kB * float(temperature_K)
    dt = float(timestep_fs) * units.fs
    c = math.exp(-float(friction_per_fs) * float(timestep_fs))
    x = torch.as_tensor(np.tile(np.asarray(start, dtype=np.float64), (replicas, 1)), dtype=dtype)
    v = torch.randn(x.shape, generator=gen, dtype=dtype) * torch.sqrt(kT / mass)
    numbers = torch.as_tensor(np.tile(model.beads.numbers, replicas), dtype=torch.long)
    template = AtomicGraph(positions=x, numbers=numbers, cell=torch.zeros(replicas, 3, 3, dtype=dtype),
                           pbc=torch.zeros(replicas, 3, dtype=torch.bool),
                           batch=torch.arange(replicas).repeat_interleave(n))

    # the pairs of each copy within the cutoff (copies never interact): from all pairs of one copy
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    offsets = (np.arange(replicas) * n)[:, None]
    all_pairs = torch.as_tensor(np.stack([(offsets + i).ravel(), (offsets + j).ravel()]))

    def forces(pos):
        keep = (pos[all_pairs[1]] - pos[all_pairs[0]]).norm(dim=-1) < model.cutoff
        edges = all_pairs[:, keep]
        graph = replace(template, positions=pos, edge_index=edges,
                        shifts=torch.zeros(edges.shape[1], 3, dtype=dtype))
        return model(graph, forces=True)[FORCES].detach()

    f = forces(x)
    frames = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        v = v + 0.5 * dt * f / mass
        x = x + 0.5 * dt * v
        v = c * v + math.sqrt(1 - c * c) * torch.sqrt(kT / mass) * torch.randn(x.shape, generator=gen,
                                                                              dtype=dtype)
        x = x + 0.5 * dt * v
        f = forces(x)
        v = v + 0.5 * dt * f / mass
        if step % interval == 0:
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"the CG replicas blew up at step {step}: a shorter time step")
            frames.append(x.reshape(replicas, n, 3).double().numpy().copy())
    wall = time.perf_counter() - t0
    kinetic = float((0.5 * mass * v * v).sum()) / replicas
    return np.array(frames).reshape(-1, replicas, n, 3), {
        "replicas": replicas, "steps": steps, "timestep_fs": timestep_fs, "wall_s": wall,
        "replica_steps_per_s": replicas * steps / wall, "simulated_ns": replicas * steps * timestep_fs * 1e-6,
        "temperature_end_K": 2 * kinetic / (3 * n * units.kB)}


def is_ala2_five_bead(cg_map, topology) -> bool:
    """True when ``cg_map`` is the alanine-dipeptide 5-bead map of ``topology`` (so the beads'
    dihedrals are phi and psi)."""
    from .maps import ala2_five_bead_map

    try:
        reference = ala2_five_bead_map(topology)
    except (ValueError, KeyError, IndexError):
        return False
    return reference.n_atoms == cg_map.n_atoms and np.allclose(reference.weights(), cg_map.weights())


def backmap_report(bead_xyz: np.ndarray, mapper, samples: int = 1, seed: Optional[int] = 0,
                   with_dihedrals: bool = False) -> Tuple[np.ndarray, Dict]:
    """All-atom frames [F * samples, n_atoms, 3] (Å) back-mapped from ``bead_xyz`` and their
    measures (module docstring)."""
    from .metrics import adjacency_from_bonds, bond_graph, clash_mask, graph_valid, has_clash

    xyz = mapper.backmap(bead_xyz, samples=samples, seed=seed)
    if not np.isfinite(xyz).all():
        raise ValueError("the back-mapped coordinates are not finite: the CG frames are far from "
                         "what the back-mapping model was trained on")
    elements = mapper.elements
    heavy = np.array([e != "H" for e in elements])
    topo = adjacency_from_bonds(len(elements), mapper.bonds)
    adj = bond_graph(xyz, elements)
    valid = graph_valid(adj, topo)
    heavy_valid = graph_valid(adj[:, heavy][:, :, heavy], topo[heavy][:, heavy])
    clash = has_clash(xyz, clash_mask(elements, mapper.bonds))
    out = {"frames": int(len(xyz)), "valid_ratio": float(np.mean(valid)),
           "heavy_valid_ratio": float(np.mean(heavy_valid)), "clash_ratio": float(np.mean(clash)),
           "meets_targets": bool(np.mean(valid) >= TARGETS["valid_ratio"] and not np.any(clash))}
    if with_dihedrals:
        import mdtraj as md

        traj = md.Trajectory((xyz / 10.0).astype(np.float32), mapper.topology)
        phi_aa, psi_aa = (np.degrees(f(traj)[1][:, 0]) for f in (md.compute_phi, md.compute_psi))
        phi_cg, psi_cg = rama.bead_phi_psi(np.repeat(bead_xyz, samples, axis=0))
        out["dihedrals_vs_beads"] = rama.dihedral_agreement(phi_aa, psi_aa, phi_cg, psi_cg)
    return xyz, out


def fes_report(bead_xyz: np.ndarray, ref_phi=None, ref_psi=None, *, ref_histogram=None,
               ref_populations=None, bin_deg: float = 30.0) -> Dict:
    """The run's bead (phi, psi) surface against a reference (module docstring)."""
    phi, psi = rama.bead_phi_psi(bead_xyz)
    out = rama.compare_surfaces(phi, psi, ref_phi, ref_psi, ref_histogram=ref_histogram,
                                ref_populations=ref_populations, bin_deg=bin_deg,
                                basin_threshold=TARGETS["basin_threshold"])
    out["frames"] = int(len(phi))
    out["meets_targets"] = bool(
        not out["unvisited_basins"]
        and out["max_population_difference_points"] <= TARGETS["max_population_difference_points"]
        and out["js_divergence"] <= TARGETS["js_divergence"])
    return out
