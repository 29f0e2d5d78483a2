"""Benchmark worker for ase_eqgnn's own models (run with the project's venv, /work/venv/bin/python).

    python benchmarks/anchors/ours.py --model painn|tp|egnn|tp-c2|tp-c3|tp-c3-sh3|tp-c3-w64|tp-c3-sh3-w64 [common worker flags]

Benchmark sizes: painn 128 features x 3 layers x 20 radial functions (SchNetPack's
PaiNN size); tp l_max 1, 4 layers, 32 features (NequIP's defaults); egnn 128 features x 3 layers.
The body-ordered ``tp`` (models/body_order.py): tp-c2 / tp-c3 are that tp with correlation 2 / 3;
tp-c3-w64 is matched to the MACE anchor's width (2 layers, 64 channels, l_max 1, correlation 3) and
tp-c3-sh3-w64 to its shape as well (its density reaches l = 3: sh_l_max 3, MACE's max_ell); tp-c3-sh3
is the same shape at 32 channels (the body-ordered model of docs/accuracy_log.md).
Cutoff 5 Å, species H, C, O, Cu, float32, randomly initialised (seeded), EqGNNCalculator on
``--device`` (cpu by default).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HPARAMS = {
    "painn": dict(features=128, layers=3, n_radial=20),
    "tp": dict(l_max=1, layers=4, features=32),
    "egnn": dict(features=128, layers=3),
    "tp-c2": dict(l_max=1, layers=4, features=32, correlation=2),
    "tp-c3": dict(l_max=1, layers=4, features=32, correlation=3),
    "tp-c3-sh3": dict(l_max=1, sh_l_max=3, layers=2, features=32, correlation=3),
    "tp-c3-w64": dict(l_max=1, layers=2, features=64, correlation=3),
    "tp-c3-sh3-w64": dict(l_max=1, sh_l_max=3, layers=2, features=64, correlation=3),
}


def main():
    p = common.worker_parser(__doc__)
    p.add_argument("--model", choices=sorted(HPARAMS), required=True)
    p.add_argument("--cuda-graphs", choices=["off", "auto"], default="off",
                   help="EqGNNCalculator(cuda_graphs=...): 'auto' replays captured CUDA graphs")
    p.add_argument("--compile", action="store_true",
                   help="EqGNNCalculator(compile=True): the energy pass compiled by torch.compile")
    args = p.parse_args()
    if args.compile:  # the first warm-up call compiles; --call-budget-s judges from the last one
        args.warmup = max(args.warmup, 2)
    common.set_threads(args.threads)
    import torch

    from ase_eqgnn.calculator import EqGNNCalculator
    from ase_eqgnn.models import build_model

    torch.manual_seed(0)
    model = build_model(args.model.split("-")[0], species=common.SPECIES, cutoff=common.CUTOFF,
                        **HPARAMS[args.model])

    def make_calc():
        return EqGNNCalculator(model, device=args.device, dtype="float32",
                               cuda_graphs="auto" if args.cuda_graphs == "auto" else False,
                               keep_freed_memory=args.freed_memory != "return", compile=args.compile)

    hp = ", ".join(f"{k}={v}" for k, v in HPARAMS[args.model].items())
    name = (f"ours-{args.model}" + ("-graphs" if args.cuda_graphs == "auto" else "")
            + ("-compiled" if args.compile else ""))
    common.run_worker(args, name, make_calc,
                      common.package_versions("ase_eqgnn", "torch", "e3nn", "ase"), "float32",
                      notes=[f"{args.model}: {hp}, cutoff {common.CUTOFF}, cuda_graphs "
                             f"{args.cuda_graphs}, compile {args.compile}"]
                      # compiled: MD may meet another neighbour layout (one more compile, once per
                      # run): a rehearsal of the same trajectory compiles it untimed
                      + (["MD timed on a second run of the same trajectory"] if args.compile else []),
                      md_rehearsal=args.compile)


if __name__ == "__main__":
    main()
