"""Benchmark worker: MACE (mace-torch 0.3.16, e3nn 0.4.4) through ``mace.calculators.MACECalculator``.

Run with the anchor's own interpreter: /work/anchors/mace/bin/python (see setup_anchors.sh).

Model: what ``mace_run_train --model MACE`` builds with hidden irreps 64x0e+64x1o, max_ell 3,
correlation 3, 2 interactions, r_max 5 Å and its other defaults (8 Bessels, polynomial cutoff p=5,
RealAgnosticInteractionBlock first then RealAgnosticResidualInteractionBlock, MLP_irreps 16x0e,
radial MLP [64, 64, 64], silu gate, use_reduced_cg False): a ``ScaleShiftMACE`` for H C O Cu,
randomly initialised (seed 0), atomic energies 0, avg_num_neighbors 20 (no data to derive it from;
it does not change the cost). Built in float64 (MACE's training default), saved with ``torch.save``
and loaded by ``MACECalculator(model_paths=..., default_dtype="float32")``, which converts it to
float32 (MACE supports float32 inference).

MACE's loader calls ``torch.load`` on a fully pickled model without ``weights_only=False``, so full
pickle loading is switched on (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) for its own saved file, in this
process only.
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
import common  # noqa: E402

HIDDEN_IRREPS = "64x0e+64x1o"


def build_and_save(path: str) -> int:
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(
        r_max=common.CUTOFF, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=len(common.SPECIES), hidden_irreps=o3.Irreps(HIDDEN_IRREPS),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(common.SPECIES)),
        avg_num_neighbors=20.0, atomic_numbers=list(common.SPECIES), correlation=3,
        gate=modules.gate_dict["silu"], radial_MLP=[64, 64, 64], use_reduced_cg=False,
        atomic_inter_scale=1.0, atomic_inter_shift=[0.0], heads=["Default"],
    )
    tmp = path + ".tmp"
    torch.save(model, tmp)
    os.replace(tmp, path)
    torch.set_default_dtype(torch.float32)
    return sum(p.numel() for p in model.parameters())


def main():
    p = common.worker_parser(__doc__)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args()
    common.set_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from mace.calculators import MACECalculator

    path = os.path.join(common.cache_dir(args), "mace_64x0e64x1o_l3_c3_2int.model")
    if not os.path.exists(path):
        build_and_save(path)

    def make_calc():
        return MACECalculator(model_paths=path, device=args.device, default_dtype=args.dtype)

    calc = make_calc()
    nparams = sum(p.numel() for p in calc.models[0].parameters())
    torch.set_num_threads(args.threads)  # in case MACE's import touched it
    common.run_worker(args, "mace", make_calc,
                      common.package_versions("mace-torch", "e3nn", "torch", "ase"), args.dtype,
                      notes=[f"ScaleShiftMACE {HIDDEN_IRREPS}, max_ell 3, correlation 3, "
                             f"2 interactions, r_max {common.CUTOFF}, {nparams} parameters, "
                             f"{args.dtype}"])


if __name__ == "__main__":
    main()
