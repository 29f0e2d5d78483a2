"""Train and register the bundled coarse-grained alanine-dipeptide potential ``ala2-cg``.

The 5-bead backbone map of the bundled back-mapper (beads at ACE C, ALA N, CA, ALA C, NME N), a
PaiNN network on the beads plus priors (bonds, angles, repulsion, dihedrals) fitted at 300 K,
trained by force matching with the package's trainer (``cg_map: data``) on the shipped CG set
``training/data/ala2_cg_5bead.npz`` (independent 1-ns OpenMM runs, mapped; see README.md),
with a short CPU budget::

    OMP_NUM_THREADS=1 python training/train_ala2_cg.py --out runs/ala2_cg --max-time 240

Then copies ``best.pt`` to ``ase_eqgnn/pretrained/potential_ala2-cg.pt`` and registers it (kind
``potential``) with its validation force errors against the mapped forces. The mapped forces are
noisy samples of the mean force (the force on a bead fluctuates with the atoms it averages over),
so their error stays large even for a perfect CG potential; the free-energy surface is the real
measure (``benchmarks/cg_loop.py``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ase_eqgnn.cg.forcematch import load_cg_dataset  # noqa: E402
from ase_eqgnn.pretrained import register  # noqa: E402
from ase_eqgnn.train import TrainConfig, train  # noqa: E402

DATASET = "training/data/ala2_cg_5bead.npz"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/ala2_cg")
    p.add_argument("--max-time", type=float, default=240.0, help="training budget, s")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=8.0)
    p.add_argument("--no-register", action="store_true")
    args = p.parse_args(argv)
    cfg = TrainConfig(data=str(ROOT / DATASET), cg_map="data", temperature=300.0, model="painn",
                      hparams={"features": args.features, "layers": args.layers}, cutoff=args.cutoff,
                      out=args.out, max_epochs=args.max_epochs, max_time=args.max_time, batch_size=64,
                      lr=2e-3, scheduler="cosine", valid_fraction=0.05, seed=0, num_threads=1,
                      progress=False, keep_freed_memory=True)
    result = train(cfg)
    best = Path(args.out) / "best.pt"
    if args.no_register:
        return
    target = ROOT / "ase_eqgnn" / "pretrained" / "potential_ala2-cg.pt"
    data = load_cg_dataset(ROOT / DATASET)
    n_runs, n_frames = len(set(data.extra["run"].tolist())), len(data)
    shutil.copyfile(best, target)
    register({
        "name": "ala2-cg",
        "kind": "potential",
        "file": target.name,
        "family": cfg.model_name,
        "hparams": cfg.model_hparams,
        "cutoff_A": cfg.cutoff,
        "coarse_grained": "5-bead backbone map (ACE C, ALA N, CA, ALA C, NME N; the map of the "
                          "bundled back-mapper 'ala2'), priors at 300 K (bonds, angles, repulsion, "
                          "dihedrals); beads_to_atoms('ala2-cg', x) makes its Atoms",
        "training_data": f"{DATASET} ({n_runs} x 1 ns OpenMM amber14/OBC2 ala2 at 300 K, mapped; "
                         f"{n_frames} frames, random 5 % validation)",
        "training": f"{result.epochs} epochs, {cfg.max_time:g} s budget on 1 CPU thread "
                    "(training/train_ala2_cg.py)",
        "test_data": "the 5 % validation split (mapped forces)",
        "test_metrics": {k: round(float(result.best_metrics[k]), 1) for k in ("forces_mae", "forces_rmse")},
        "units": "forces meV/Å per bead component (mapped all-atom forces: noisy samples of the mean "
                 "force, so large even for an exact CG potential)",
    })
    print(f"registered ala2-cg: {target} ({target.stat().st_size / 1e6:.2f} MB), {result.best_metrics}")


if __name__ == "__main__":
    main()
