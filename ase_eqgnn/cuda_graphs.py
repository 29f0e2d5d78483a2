"""`CapturedPotential`: one structure's energy, forces (and stress) evaluation captured as a CUDA
graph, replayed while its neighbour list stays the same.

Why: below about a thousand atoms an eager GPU call is bound by launching some 500-1,000 small
kernels from Python, not by running them (the GPU is busy for a small fraction of the call). A CUDA
graph launches the whole recorded sequence, forward and backward, at once. A graph replays fixed shapes on fixed buffers, so:

- the neighbour list is the Verlet list as built (every pair within cutoff + skin at the last build);
  the models' cutoff envelope gives the pairs beyond the cutoff exactly zero weight and gradient, so
  the results are those of the pruned list;
- positions and cell are copied into the captured input buffers before each replay, and the outputs
  are overwritten by the next replay (copy them out first);
- the neighbour layouts (:func:`~ase_eqgnn.models.layouts.neighborhoods`) are built in an eager
  warm-up inside the same :func:`~ase_eqgnn.models.layouts.reuse_layouts` block, because building one
  reads sizes back from the GPU, which a capture forbids; they are kept with the graph, which reads
  them at every replay.

A new list (a rebuild, another cell or other atoms) needs a new capture (about three eager calls).

Example (on a GPU)::

    graph = AtomicGraph.from_atoms(atoms, dtype=torch.float32, device="cuda").with_neighbors(5.5)
    captured = CapturedPotential(model.cuda(), graph, stress=True)
    out = captured(graph.positions + 0.01, graph.cell)     # dict of energy, energies, forces, stress
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict

import torch

from .graph import AtomicGraph
from .models.layouts import reuse_layouts
from .models.potential import Potential

# Eager calls before the capture: they build the layouts and let cuBLAS and autograd set up.
_WARMUP_CALLS = 2


class CapturedPotential:
    """``model(graph, forces=True, stress=stress)`` recorded once and replayed for new positions.

    ``graph``: one structure with its edges, on the model's CUDA device and in its dtype; the edges,
    atoms and pbc are fixed from then on. ``layout``: as in :meth:`Potential.forward`. ``capture=False`` runs the same fixed-buffer evaluation
    eagerly (the CPU path of the tests).
    """

    def __init__(self, model: Potential, graph: AtomicGraph, stress: bool, capture: bool = True,
                 layout: str = "auto"):
        if graph.edge_index is None:
            raise ValueError("the graph has no neighbour list")
        self.model = model
        self.stress = bool(stress)
        self.layout = layout
        # Captured input buffers: replays read positions and cell from these exact tensors.
        self.graph = replace(graph, positions=graph.positions.detach().clone(),
                             cell=graph.cell.detach().clone())
        self.cuda_graph = None
        self.out: Dict[str, torch.Tensor] = {}
        self._layouts: dict = {}
        if not capture:
            return
        # The layouts are built in the warm-up and read by every replay: they live as long as self.
        with reuse_layouts() as self._layouts:
            side = torch.cuda.Stream(device=self.graph.positions.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_CALLS):
                    self._evaluate()
            torch.cuda.current_stream().wait_stream(side)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                self.out = self._evaluate()
        self.cuda_graph = cuda_graph

    def _evaluate(self) -> Dict[str, torch.Tensor]:
        return self.model(self.graph, forces=True, stress=self.stress, layout=self.layout)

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Results for ``positions`` [N, 3] and ``cell`` [1, 3, 3] (valid until the next call)."""
        self.graph.positions.copy_(positions)
        self.graph.cell.copy_(cell)
        if self.cuda_graph is None:
            return self._evaluate()
        self.cuda_graph.replay()
        return self.out


__all__ = ["CapturedPotential"]
