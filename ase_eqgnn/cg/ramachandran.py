"""Backbone dihedrals, Ramachandran basins and free-energy-surface comparison for CG and all-atom runs.

Dihedral of four points ``a, b, c, d`` (IUPAC sign, as mdtraj and OpenMM), in degrees in (-180, 180]::

    b1 = b - a,  b2 = c - b,  b3 = d - c,  n1 = b1 x b2,  n2 = b2 x b3
    phi = atan2( |b2| b1 . n2 ,  n1 . n2 )

With the alanine-dipeptide 5-bead backbone map (beads ACE C, ALA N, CA, C, NME N) the backbone
dihedrals are dihedrals of beads: ``phi = C(ACE)-N-CA-C`` (beads 0-1-2-3) and ``psi = N-CA-C-N(NME)``
(beads 1-2-3-4) (:data:`ALA2_BEAD_DIHEDRALS`). Since that map places each bead on its atom, these
equal the all-atom phi/psi of the same frame exactly.

Basins (degrees; a partition of the plane, so the three populations sum to one):

- ``alphaL``: 0 <= phi < 120 (left-handed helix and C7ax);
- ``alphaR``: otherwise, with -150 <= psi < 50 (right-handed helix and the bridge region);
- ``beta``: the rest, phi outside [0, 120) with psi >= 50 or psi < -150 (beta, PII and C7eq; it
  includes phi near +180, where the extended basin wraps around).

Histograms (:func:`histogram`) count (phi, psi) in square bins of ``bin_deg`` (30 deg: 12 x 12 on
[-180, 180)^2) and are normalised to probabilities. The Jensen-Shannon divergence of two histograms
``P, Q`` (natural log, in nats, between 0 and ln 2)::

    JS(P, Q) = 1/2 KL(P | M) + 1/2 KL(Q | M),   M = (P + Q) / 2,   KL(P | M) = sum_k P_k ln(P_k / M_k)

Example::

    >>> import numpy as np
    >>> phi, psi = np.array([-70.0, -70.0, 60.0]), np.array([140.0, -40.0, 40.0])
    >>> populations(phi, psi)
    {'beta': 0.3333333333333333, 'alphaR': 0.3333333333333333, 'alphaL': 0.3333333333333333}
    >>> round(js_divergence(histogram(phi, psi), histogram(phi, psi)), 12)
    0.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["ALA2_BEAD_DIHEDRALS", "BASINS", "dihedrals", "bead_phi_psi", "basin_labels", "populations",
           "histogram", "js_divergence", "angle_difference", "dihedral_agreement",
           "compare_surfaces", "plot_side_by_side"]

ALA2_BEAD_DIHEDRALS = {"phi": (0, 1, 2, 3), "psi": (1, 2, 3, 4)}
BASINS = ("beta", "alphaR", "alphaL")


def dihedrals(positions, quadruples) -> np.ndarray:
    """Dihedral angles (degrees) [..., K] of ``positions`` [..., n, 3] for index ``quadruples`` [K, 4]."""
    x = np.asarray(positions, dtype=np.float64)
    q = np.asarray(quadruples, dtype=np.int64).reshape(-1, 4)
    a, b, c, d = (x[..., q[:, k], :] for k in range(4))
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, axis=-1)
    return np.degrees(np.arctan2(y, np.sum(n1 * n2, axis=-1)))


def bead_phi_psi(bead_positions, phi: Sequence[int] = ALA2_BEAD_DIHEDRALS["phi"],
                 psi: Sequence[int] = ALA2_BEAD_DIHEDRALS["psi"]) -> Tuple[np.ndarray, np.ndarray]:
    """(phi, psi) in degrees [frames] from bead positions [frames, n_beads, 3] (default: the ala2
    5-bead map's bead quadruples)."""
    angles = dihedrals(bead_positions, [phi, psi])
    return angles[..., 0], angles[..., 1]


def _check_angles(phi, psi) -> Tuple[np.ndarray, np.ndarray]:
    phi, psi = np.asarray(phi, dtype=np.float64).reshape(-1), np.asarray(psi, dtype=np.float64).reshape(-1)
    if phi.shape != psi.shape or phi.size == 0:
        raise ValueError(f"phi and psi need the same, non-zero number of frames ({phi.size}, {psi.size})")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(psi))):
        raise ValueError("phi and psi must be finite (degrees)")
    return (phi + 180.0) % 360.0 - 180.0, (psi + 180.0) % 360.0 - 180.0


def basin_labels(phi, psi) -> np.ndarray:
    """Basin index per frame (0 = beta, 1 = alphaR, 2 = alphaL; module docstring) from degrees."""
    phi, psi = _check_angles(phi, psi)
    alpha_l = (phi >= 0.0) & (phi < 120.0)
    alpha_r = ~alpha_l & (psi >= -150.0) & (psi < 50.0)
    return np.where(alpha_l, 2, np.where(alpha_r, 1, 0))


def populations(phi, psi) -> Dict[str, float]:
    """Fraction of frames in each basin of :data:`BASINS` (sums to one)."""
    counts = np.bincount(basin_labels(phi, psi), minlength=len(BASINS))
    return {name: float(c / counts.sum()) for name, c in zip(BASINS, counts)}


def histogram(phi, psi, bin_deg: float = 30.0) -> np.ndarray:
    """Normalised 2-D histogram [n_bins (phi), n_bins (psi)] on [-180, 180)^2 with square bins."""
    n_bins = int(round(360.0 / bin_deg))
    if n_bins < 1 or abs(n_bins * bin_deg - 360.0) > 1e-9:
        raise ValueError(f"bin_deg must divide 360, got {bin_deg}")
    phi, psi = _check_angles(phi, psi)
    i = np.minimum(((phi + 180.0) // bin_deg).astype(np.int64), n_bins - 1)
    j = np.minimum(((psi + 180.0) // bin_deg).astype(np.int64), n_bins - 1)
    counts = np.zeros((n_bins, n_bins))
    np.add.at(counts, (i, j), 1.0)
    return counts / counts.sum()


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (nats, natural log; 0 ... ln 2) of two histograms of one shape
    (normalised here)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in shape: {p.shape} vs {q.shape}")
    if np.any(p < 0) or np.any(q < 0) or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("histograms must be non-negative with a positive total")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def angle_difference(a, b) -> np.ndarray:
    """Signed circular difference a - b (degrees) in [-180, 180)."""
    return (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + 180.0) % 360.0 - 180.0


def dihedral_agreement(phi_a, psi_a, phi_b, psi_b, tolerance_deg: float = 10.0) -> Dict[str, float]:
    """How far two sets of (phi, psi) of the same frames differ (e.g. the heavy-atom dihedrals of
    back-mapped structures vs the CG beads'): mean and max absolute circular difference (degrees)
    and the fraction of frames with both within ``tolerance_deg``."""
    dphi = np.abs(angle_difference(phi_a, phi_b)).reshape(-1)
    dpsi = np.abs(angle_difference(psi_a, psi_b)).reshape(-1)
    if dphi.shape != dpsi.shape or dphi.size == 0:
        raise ValueError("need the same, non-zero number of frames for phi and psi")
    return {"phi_mean_abs_deg": float(dphi.mean()), "psi_mean_abs_deg": float(dpsi.mean()),
            "phi_max_abs_deg": float(dphi.max()), "psi_max_abs_deg": float(dpsi.max()),
            "fraction_within": float(np.mean((dphi <= tolerance_deg) & (dpsi <= tolerance_deg))),
            "tolerance_deg": float(tolerance_deg)}


def compare_surfaces(phi, psi, ref_phi=None, ref_psi=None, *, ref_histogram=None,
                     ref_populations: Optional[Dict[str, float]] = None, bin_deg: float = 30.0,
                     basin_threshold: float = 0.01) -> Dict:
    """Compare a run's (phi, psi) with a reference (its angles, or its histogram and populations).

    Returns the populations of both, their largest absolute difference (percentage points), the JS
    divergence of the histograms, and which basins holding >= ``basin_threshold`` of the reference
    the run never visits."""
    if ref_phi is not None:
        ref_histogram = histogram(ref_phi, ref_psi, bin_deg)
        ref_populations = populations(ref_phi, ref_psi)
    if ref_histogram is None or ref_populations is None:
        raise ValueError("give the reference angles, or its histogram and populations")
    run_pop = populations(phi, psi)
    counts = np.bincount(basin_labels(phi, psi), minlength=len(BASINS))
    return {"populations": run_pop, "reference_populations": dict(ref_populations),
            "max_population_difference_points": 100.0 * max(abs(run_pop[b] - ref_populations[b])
                                                            for b in BASINS),
            "js_divergence": js_divergence(histogram(phi, psi, bin_deg), ref_histogram),
            "bin_deg": float(bin_deg),
            "unvisited_basins": [b for b, c in zip(BASINS, counts)
                                 if ref_populations[b] >= basin_threshold and c == 0]}


def plot_side_by_side(surfaces: Dict[str, Tuple[np.ndarray, np.ndarray]], path: Union[str, os.PathLike],
                      bin_deg: float = 10.0, temperature_K: Optional[float] = None) -> Path:
    """Ramachandran plots of several runs side by side, ``{title: (phi, psi)}`` in degrees, written to
    ``path`` (PNG/PDF/SVG by extension) through a temporary file. With ``temperature_K`` the colour is
    the free energy -kT ln p (eV, zero at each panel's most populated bin, one scale up to 8 kT for
    all panels), else the probability."""
    from ase import units
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state in the host process

    if not surfaces:
        raise ValueError("nothing to plot")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output folder {path.parent} does not exist")
    fig = Figure(figsize=(4.2 * len(surfaces), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(surfaces), squeeze=False)[0]
    edges = np.linspace(-180, 180, int(round(360 / bin_deg)) + 1)
    hists = {title: histogram(phi, psi, bin_deg) for title, (phi, psi) in surfaces.items()}
    if temperature_K is not None:  # one colour scale for all panels: 0 ... 8 kT
        kT = units.kB * temperature_K
        with np.errstate(divide="ignore"):
            values = {t: -kT * np.log(h / h.max()) for t, h in hists.items()}
        vmax, label = 8 * kT, "free energy (eV)"
    else:
        values, vmax, label = hists, max(h.max() for h in hists.values()), "probability"
    for ax, (title, (phi, psi)) in zip(axes, surfaces.items()):
        mesh = ax.pcolormesh(edges, edges, np.ma.masked_where(hists[title] == 0, values[title]).T,
                             cmap="viridis", vmin=0.0, vmax=vmax)
        fig.colorbar(mesh, ax=ax, label=label)
        pop = populations(phi, psi)
        ax.set_title(f"{title}\n" + ", ".join(f"{b} {100 * v:.1f}%" for b, v in pop.items()), fontsize=9)
        ax.set_xlabel("phi (deg)")
        ax.set_ylabel("psi (deg)")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
        ax.set_aspect("equal")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
