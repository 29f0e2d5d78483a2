"""`CompiledEnergies`: a potential's energy pass compiled by ``torch.compile`` (TorchInductor).

Why: a small molecule's call is bound by per-operation overhead, not arithmetic (hundreds of small
tensor operations per energy+forces call). Inductor fuses the elementwise work of
:meth:`~ase_eqgnn.models.potential.Potential.atom_energies` and of its backward pass into generated
C++ (CPU) or Triton (GPU) kernels. It pays on molecules and systems of about a hundred atoms, most for
``tp``'s many small tensor-product steps; where arithmetic and memory traffic dominate (large
systems) it gains nothing (measurements: ``docs/benchmarks.md``). Opt-in: the compile costs more
than a short run saves.

What it costs: the first call compiles (tens of seconds; Inductor caches the result on disk, so a
later process with the same model compiles faster). The numbers of atoms and pairs
are declared dynamic, so MD does not recompile as they change; another neighbour layout (a molecule
that stops being "dense", see :mod:`ase_eqgnn.models.layouts`), a first stress
call, or a layout width that changes for the first time compiles once more. Only the first
derivative goes through the compiled code: training with a force loss (second derivatives)
evaluates eagerly.

The neighbourhood is built outside the compiled function (a padded layout reads sizes back to the
host), by :meth:`Potential.forward`, which takes this object as ``energy_fn``.

Example
-------
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", species=[1, 6], cutoff=4.0, features=8, layers=1)
>>> energies = CompiledEnergies(model)   # compiles at its first call
>>> # out = model(graph, forces=True, energy_fn=energies)
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .models.potential import Potential


class CompiledEnergies:
    """``torch.compile(model.atom_energies)``, called like :meth:`Potential.atom_energies`."""

    def __init__(self, model: Potential):
        self.model = model
        self._fn = torch.compile(model.atom_energies)

    def __call__(self, species: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                 batch: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor,
                 strain: Optional[torch.Tensor] = None, neighborhood: Any = None) -> torch.Tensor:
        # The numbers of atoms and pairs, and the layout's sizes, change from call to call in MD:
        # declared dynamic, they do not recompile the function (which would take seconds each).
        for tensor in (species, positions, batch, shifts):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(edge_index, 1)
        for value in vars(neighborhood).values() if neighborhood is not None else ():
            if isinstance(value, torch.Tensor):
                for dim in range(min(value.dim(), 2)):  # (R and M of a padded layout: its _sizes)
                    torch._dynamo.maybe_mark_dynamic(value, dim)
        return self._fn(species, positions, cell, batch, edge_index, shifts, strain, neighborhood)


__all__ = ["CompiledEnergies"]
