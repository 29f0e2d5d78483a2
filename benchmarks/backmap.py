"""Back-mapping benchmark: CGVAE metrics on held-out frames and back-mapping speed.

    python benchmarks/backmap.py                                   # ala2 bundled model
    python benchmarks/backmap.py --chignolin-model runs/backmap_chignolin/best.pt
    python benchmarks/backmap.py --train-chignolin 600            # quick chignolin model first

ala2: bundled ``ala2`` model (5-bead map), first --frames frames of training/data/ala2_test.h5 (an
independent OpenMM run). Chignolin: one bead per residue (centre of geometry), held-out frames of
training/data/chignolin_test.h5, with a model given by path or trained here for --train-chignolin
seconds (skipped otherwise). Metrics (ase_eqgnn.cg.metrics, CGVAE's definitions): reconstruction
(posterior mean) and --samples prior samples per frame. Speed: all-atom frames per second
(1 sample per CG frame, float32, this machine's CPU, torch threads as set by --threads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("RMSD all atoms (Å)", "rmsd"), ("RMSD heavy atoms (Å)", "heavy_rmsd"),
        ("graph-edit ratio, heavy (CGVAE)", "heavy_graph_edit_ratio"),
        ("graph-edit ratio, all atoms (CGVAE)", "graph_edit_ratio"),
        ("graph-edit ratio, heavy, symmetric", "heavy_graph_edit_ratio_sym"),
        ("valid ratio, heavy-atom graph", "heavy_valid_ratio"),
        ("valid ratio, all-atom graph", "valid_ratio"),
        ("steric clash ratio", "clash_ratio"), ("diversity, all atoms", "diversity"),
        ("diversity, heavy atoms", "heavy_diversity")]
CGVAE_ALA2 = {"recon_rmsd": 0.160, "sample_heavy_rmsd": 0.146, "sample_heavy_graph_edit_ratio": 0.001}


def table(name: str, m: dict, reference: dict | None = None) -> str:
    lines = [f"### {name}: {int(m['frames'])} frames, {int(m['samples_per_frame'])} samples/frame",
             "", "| metric | reconstruction | samples | CGVAE (paper) |", "|---|---|---|---|"]
    for label, key in ROWS:
        rec, smp = m.get(f"recon_{key}", float("nan")), m.get(f"sample_{key}", float("nan"))
        ref = [f"{reference[k]:.3f} ({k.split('_')[0]})" for k in (reference or {})
               if k.endswith("_" + key) and k.split("_", 1)[1] == key]
        fmt = lambda v: "-" if v != v else f"{v:.4f}"  # nan (e.g. diversity of 1 sample) -> "-"
        lines.append(f"| {label} | {fmt(rec)} | {fmt(smp)} | {', '.join(ref) or '-'} |")
    return "\n".join(lines)


def speed(mapper, cg: np.ndarray, batch: int) -> float:
    mapper.backmap(cg[:batch], samples=1, seed=0, batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    mapper.backmap(cg, samples=1, seed=0, batch_size=batch)
    return len(cg) / (time.perf_counter() - t0)


def run(name: str, mapper, xyz: np.ndarray, samples: int, reference=None) -> None:
    from ase_eqgnn.cg.backmap import evaluate_model

    m = evaluate_model(mapper, xyz, samples=samples, seed=0)
    print(table(name, m, reference))
    cg = mapper.cg_map.bead_positions(xyz)
    rates = {b: speed(mapper, cg, b) for b in (1, 64, 512)}
    print("\nback-mapping speed (1 sample/frame, CPU float32): "
          + ", ".join(f"batch {b}: {r:,.0f} frames/s" for b, r in rates.items()) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ala2", help="ala2 model: bundled name or path")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--chignolin-model", default=None)
    ap.add_argument("--train-chignolin", type=float, default=0.0, help="seconds (0 = skip)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ase_eqgnn.cg.backmap import BackMapper
    from ase_eqgnn.cg.train import load_trajectories, train_backmap

    xyz, _ = load_trajectories([str(ROOT / "training/data/ala2_test.h5")])
    run("alanine dipeptide, 5-bead map (ala2_test.h5)", BackMapper.load(args.model),
        xyz[: args.frames], args.samples, CGVAE_ALA2)

    chig = args.chignolin_model
    if chig is None and args.train_chignolin > 0:
        chig = str(train_backmap({
            "traj": [str(ROOT / "training/data/chignolin_train.h5")], "map": "residue",
            "out": str(ROOT / "runs/backmap_chignolin"), "max_time": args.train_chignolin,
            "max_epochs": 1000, "batch_size": 16, "threads": args.threads, "val_eval_frames": 40,
            "model": {"features": 48, "latent_dim": 12, "encoder_layers": 2, "decoder_layers": 3,
                      "cg_cutoff": 16.0}}, progress=False))
    if chig is None:
        print("### chignolin, one bead per residue: not done (give --chignolin-model or "
              "--train-chignolin SECONDS)")
        return
    xc, _ = load_trajectories([str(ROOT / "training/data/chignolin_test.h5")])
    run("chignolin, one bead per residue, cog (chignolin_test.h5)", BackMapper.load(chig), xc,
        args.samples)


if __name__ == "__main__":
    main()
