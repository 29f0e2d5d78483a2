"""Benchmark worker: NequIP 0.19.1 (e3nn 0.6.0) through its ASE calculator (NequIPCalculator).

Run with the anchor's own interpreter: /work/anchors/nequip/bin/python (see setup_anchors.sh).

Model: ``nequip.model.NequIPGNNModel`` with nequip's defaults, which are the size of our ``tp``
benchmark model: 4 layers, l_max 1 (parity on), 32 features, 8 Bessels, radial MLP 1x128,
polynomial cutoff p=6; r_max 5 Å, type names H C O Cu, ``model_dtype="float32"``, seed 0,
avg_num_neighbors 20 (no data to derive it from; the value does not change the cost).

How it is run: nequip's model builder gives the eager ``GraphModel`` -- the object that
``NequIPCalculator._from_saved_model(..., compile_mode="eager")`` would load from a checkpoint or
package -- and it goes into ``NequIPCalculator`` with nequip's own ``basic_transforms`` (species
mapper + its default neighbour-list backend), exactly as that loader wires it. nequip's recommended
deployment is ``nequip-compile``: its TorchScript mode refuses torch >= 2.10 (the anchor runs torch
2.13), and its AOTInductor mode needs a training checkpoint/package plus a C++ build of each model
(minutes on this 2-core machine), so the default here is eager. ``--compile-mode compile`` uses
nequip's torch.compile path instead (slow first call; the warm-up absorbs it).
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TYPE_NAMES = ["H", "C", "O", "Cu"]


def main():
    p = common.worker_parser(__doc__)
    p.add_argument("--compile-mode", choices=["eager", "compile"], default="eager")
    args = p.parse_args()
    common.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*per_type_energy_.*")

    from nequip.integrations.ase import NequIPCalculator
    from nequip.integrations.utils import basic_transforms
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)
    model = NequIPGNNModel(seed=0, model_dtype="float32", r_max=common.CUTOFF, type_names=TYPE_NAMES,
                           avg_num_neighbors=20.0, compile_mode=args.compile_mode,
                           num_layers=4, l_max=1, num_features=32)
    model.eval()
    r_max = float(model.metadata["r_max"])
    type_names = model.metadata["type_names"].split(" ")

    def make_calc():
        return NequIPCalculator(model=model, device=args.device,
                                transforms=basic_transforms(model.metadata, r_max, type_names,
                                                            {t: t for t in type_names}))

    nparams = sum(p.numel() for p in model.parameters())
    common.run_worker(args, "nequip", make_calc,
                      common.package_versions("nequip", "e3nn", "torch", "ase"), "float32",
                      notes=[f"NequIPGNNModel 4 layers, l_max 1, 32 features, r_max {common.CUTOFF}, "
                             f"{nparams} parameters, {args.compile_mode} mode"])


if __name__ == "__main__":
    main()
