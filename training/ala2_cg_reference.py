"""Alanine-dipeptide CG reference: force-matching data and the all-atom (phi, psi) reference surface.

Input: independent OpenMM runs made with ``training/generate_openmm.py --system ala2`` (each a
``PREFIX.h5`` + ``PREFIX.npz`` pair; see training/README.md for the commands). Output:

- ``--dataset`` (.npz, :func:`ase_eqgnn.cg.forcematch.save_cg_dataset`): bead positions (Å) and
  mapped forces (eV/Å) of the 5-bead backbone map (beads ACE C, ALA N, CA, C, NME N; the force on a
  bead is the sum of the forces on its atoms), float32, every ``--every``-th frame of every run, plus
  per-frame ``run`` (seed), ``time_ps``, ``phi``, ``psi`` (degrees);
- ``--reference`` (.json): the (phi, psi) reference from all frames of all runs: basin populations
  (:mod:`ase_eqgnn.cg.ramachandran`'s beta / alphaR / alphaL), their standard error from the spread
  between runs, the populations of the two halves (the runs split in two sets of equal length, by
  seed) and of the early and late halves of every run, and the normalised 12 x 12 histogram on 30°
  bins.

Usage::

    python training/ala2_cg_reference.py --runs RUN_PREFIX... \
        --dataset training/data/ala2_cg_5bead.npz --reference training/data/ala2_rama_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ase_eqgnn.cg import ramachandran as rama  # noqa: E402
from ase_eqgnn.cg.beads import BeadSet  # noqa: E402
from ase_eqgnn.cg.forcematch import CGDataset, map_frames, save_cg_dataset  # noqa: E402
from ase_eqgnn.cg.maps import ala2_five_bead_map  # noqa: E402
from ase_eqgnn.data import read_dataset  # noqa: E402


def load_run(prefix: pathlib.Path) -> dict:
    """One run's bead positions, mapped forces, (phi, psi), times and metadata."""
    import mdtraj

    h5, npz = prefix.with_suffix(".h5"), prefix.with_suffix(".npz")
    frames = read_dataset(h5, energies=npz)
    topology = mdtraj.load_frame(str(h5), 0).topology
    cg_map = ala2_five_bead_map(topology)
    positions, forces = map_frames(frames, cg_map)
    phi, psi = rama.bead_phi_psi(positions)
    with np.load(npz, allow_pickle=False) as meta:
        info = {"seed": int(meta["seed"]), "temperature_K": float(meta["temperature_K"]),
                "timestep_fs": float(meta["timestep_fs"]), "time_ps": np.asarray(meta["time_ps"])}
    return {"prefix": str(prefix), "cg_map": cg_map, "numbers": frames[0].numbers,
            "positions": positions, "forces": forces, "phi": phi, "psi": psi, **info}


def summarise(runs: list, bin_deg: float = 30.0) -> dict:
    """Populations (all, per run, halves by runs and by time), their between-run standard error, the
    histogram, and the JS divergence between the halves."""
    runs = sorted(runs, key=lambda r: r["seed"])
    phi = np.concatenate([r["phi"] for r in runs])
    psi = np.concatenate([r["psi"] for r in runs])
    per_run = [rama.populations(r["phi"], r["psi"]) for r in runs]
    frames = np.array([len(r["phi"]) for r in runs])
    # split the seed-ordered runs into two sets with (as nearly as possible) equal frame counts
    cut = int(np.argmin(np.abs(np.cumsum(frames) - frames.sum() / 2))) + 1
    halves = {"A": runs[:cut], "B": runs[cut:]} if len(runs) > 1 else {}
    out = {
        "frames": int(frames.sum()), "runs": len(runs),
        "simulated_ns": round(float(sum(len(r["phi"]) * (r["time_ps"][1] - r["time_ps"][0]) for r in runs)) / 1000, 6),
        "populations": rama.populations(phi, psi),
        "bin_deg": bin_deg, "histogram": rama.histogram(phi, psi, bin_deg).round(8).tolist(),
        "per_run": [{"seed": r["seed"], "frames": len(r["phi"]), "populations": p}
                    for r, p in zip(runs, per_run)],
    }
    if len(runs) > 1:
        spread = {b: float(np.std([p[b] for p in per_run], ddof=1) / np.sqrt(len(runs)))
                  for b in rama.BASINS}
        out["populations_standard_error"] = spread
        split = {}
        for name, group in halves.items():
            gphi = np.concatenate([r["phi"] for r in group])
            gpsi = np.concatenate([r["psi"] for r in group])
            split[name] = {"seeds": [r["seed"] for r in group], "frames": int(gphi.size),
                           "populations": rama.populations(gphi, gpsi), "hist": rama.histogram(gphi, gpsi, bin_deg)}
        out["halves_by_runs"] = {
            **{k: {kk: vv for kk, vv in v.items() if kk != "hist"} for k, v in split.items()},
            "max_difference_points": 100 * max(abs(split["A"]["populations"][b] - split["B"]["populations"][b])
                                               for b in rama.BASINS),
            "js_divergence": rama.js_divergence(split["A"]["hist"], split["B"]["hist"])}
    early = [rama.populations(r["phi"][: len(r["phi"]) // 2], r["psi"][: len(r["psi"]) // 2]) for r in runs]
    late = [rama.populations(r["phi"][len(r["phi"]) // 2:], r["psi"][len(r["psi"]) // 2:]) for r in runs]
    mean = lambda ps: {b: float(np.mean([p[b] for p in ps])) for b in rama.BASINS}  # noqa: E731
    out["halves_by_time"] = {"early": mean(early), "late": mean(late),
                             "max_difference_points": 100 * max(abs(mean(early)[b] - mean(late)[b])
                                                                for b in rama.BASINS)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=pathlib.Path, required=True,
                   help="run prefixes (PREFIX.h5 and PREFIX.npz from generate_openmm.py)")
    p.add_argument("--dataset", type=pathlib.Path, required=True, help="CG force-matching .npz to write")
    p.add_argument("--reference", type=pathlib.Path, required=True, help="(phi, psi) reference .json to write")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame in the dataset")
    a = p.parse_args(argv)
    if a.every < 1:
        p.error("--every must be positive")
    for prefix in a.runs:
        for suffix in (".h5", ".npz"):
            if not prefix.with_suffix(suffix).exists():
                p.error(f"missing {prefix.with_suffix(suffix)}")
    runs = [load_run(prefix) for prefix in a.runs]
    first = runs[0]
    for r in runs[1:]:
        if r["cg_map"] != first["cg_map"] or np.any(r["numbers"] != first["numbers"]):
            p.error(f"{r['prefix']} is another molecule or atom order than {first['prefix']}")
        if r["temperature_K"] != first["temperature_K"]:
            p.error(f"{r['prefix']} ran at {r['temperature_K']} K, {first['prefix']} at {first['temperature_K']} K")
    if len({r["seed"] for r in runs}) != len(runs):
        p.error("two runs share a seed: they are not independent")

    summary = summarise(runs)
    summary.update(system="ala2", temperature_K=first["temperature_K"], timestep_fs=first["timestep_fs"],
                   frame_spacing_ps=float(first["time_ps"][1] - first["time_ps"][0]),
                   forcefield="amber14-all.xml + implicit/obc2.xml (OpenMM, no constraints)",
                   basins=rama.__doc__.split("Basins")[1].split("Histograms")[0].strip())
    keep = [np.arange(0, len(r["phi"]), a.every) for r in runs]
    data = CGDataset(
        np.concatenate([r["positions"][k] for r, k in zip(runs, keep)]),
        np.concatenate([r["forces"][k] for r, k in zip(runs, keep)]),
        first["cg_map"], BeadSet.from_map(first["cg_map"], first["numbers"]), first["temperature_K"],
        extra={"run": np.concatenate([np.full(len(k), r["seed"], dtype=np.int32) for r, k in zip(runs, keep)]),
               "time_ps": np.concatenate([r["time_ps"][k] for r, k in zip(runs, keep)]).astype(np.float32),
               "phi": np.concatenate([r["phi"][k] for r, k in zip(runs, keep)]).astype(np.float32),
               "psi": np.concatenate([r["psi"][k] for r, k in zip(runs, keep)]).astype(np.float32)})
    save_cg_dataset(a.dataset, data)
    tmp = a.reference.with_name(f".{a.reference.name}.tmp{os.getpid()}")
    # one line per histogram row and per populations dict keeps the file short and readable
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  json.dumps(summary, indent=1))
    tmp.write_text(text + "\n")
    os.replace(tmp, a.reference)
    halves = summary.get("halves_by_runs", {})
    print(f"{summary['runs']} runs, {summary['simulated_ns']:.2f} ns, {summary['frames']} frames; "
          f"populations " + ", ".join(f"{b} {100 * v:.1f}%" for b, v in summary["populations"].items()))
    if halves:
        print("halves by runs: " + "; ".join(
            f"{k} " + ", ".join(f"{b} {100 * v:.1f}" for b, v in halves[k]["populations"].items())
            for k in ("A", "B")) + f"; max difference {halves['max_difference_points']:.1f} points, "
              f"JS {halves['js_divergence']:.4f}")
    print(f"dataset {a.dataset}: {len(data)} frames; reference {a.reference}")


if __name__ == "__main__":
    main()
