"""Benchmark worker: SchNetPack 2.0.4 PaiNN through its ASE calculator (SpkCalculator).

Run with the anchor's own interpreter: /work/anchors/schnetpack/bin/python (see setup_anchors.sh).

Model: PaiNN(n_atom_basis=128, n_interactions=3, GaussianRBF(n_rbf=20, cutoff=5), CosineCutoff(5)),
Atomwise energy head, Forces(energy_key="energy") -- the size of our ``painn`` benchmark model.
Randomly initialised (seeded), saved with torch.save as SchNetPack's own loader expects, and loaded
by ``schnetpack.interfaces.ase_interface.SpkCalculator`` with dtype float32 and SchNetPack's
ASENeighborList (cutoff 5 Å; ``--neighbor-list matscipy|torch`` picks the others).

Quirks of schnetpack 2.0.4 on current torch, handled here and only inside this process:
- it imports ``T_co`` from ``torch.utils.data.dataloader`` (gone from recent torch): we set it first;
- its loader calls ``torch.load`` without ``weights_only=False`` on a fully pickled model, so full
  pickle loading is switched on (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) for its own saved file.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
import common  # noqa: E402


def build_and_save(path: str) -> None:
    import schnetpack as spk
    import torch

    torch.manual_seed(0)
    cutoff = common.CUTOFF
    painn = spk.representation.PaiNN(
        n_atom_basis=128, n_interactions=3,
        radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff))
    model = spk.model.NeuralNetworkPotential(
        representation=painn,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=128, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
    )
    tmp = path + ".tmp"
    torch.save(model, tmp)
    os.replace(tmp, path)


def main():
    p = common.worker_parser(__doc__)
    p.add_argument("--neighbor-list", choices=["ase", "matscipy", "torch"], default="ase")
    args = p.parse_args()
    common.set_threads(args.threads)
    import typing

    import torch
    import torch.utils.data.dataloader as _dl

    if not hasattr(_dl, "T_co"):
        _dl.T_co = typing.TypeVar("T_co", covariant=True)
    import schnetpack as spk
    from schnetpack.interfaces.ase_interface import SpkCalculator

    cache = common.cache_dir(args)
    path = os.path.join(cache, "schnetpack_painn_128x3x20.pt")
    if not os.path.exists(path):
        build_and_save(path)
    nl_cls = {"ase": spk.transform.ASENeighborList,
              "matscipy": spk.transform.MatScipyNeighborList,
              "torch": spk.transform.TorchNeighborList}[args.neighbor_list]

    def make_calc():
        return SpkCalculator(model_file=path, neighbor_list=nl_cls(cutoff=common.CUTOFF),
                             energy_key="energy", force_key="forces", energy_unit="eV",
                             position_unit="Ang", device=args.device, dtype=torch.float32)

    common.run_worker(args, "schnetpack-painn", make_calc,
                      common.package_versions("schnetpack", "torch", "ase"), "float32",
                      notes=[f"PaiNN 128x3, 20 Gaussians, cutoff {common.CUTOFF}, "
                             f"{nl_cls.__name__}"])


if __name__ == "__main__":
    main()
