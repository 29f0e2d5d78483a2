"""The shared potential skeleton: representation -> per-atom energies -> energy, forces, stress.

A family module (EGNN, PaiNN, tensor-product net) is a *representation*: it maps species indices
[N], edges [2, E] and edge vectors [E, 3] (Å) to per-atom invariant features h [N, F]. The
:class:`Potential` wraps it with

    e_i = MLP(h_i)                                   (energy head, F -> head_hidden -> 1)
    E_i = scale * e_i + shift + E0[Z_i]              (eV; ``scale``, ``shift``, ``E0`` are buffers)
    E   = sum_{i in structure} E_i                   (eV)
    F_i = -dE/dr_i                                   (eV/Å, autograd)
    σ   = (1/V) dE/dε |_{ε=0},   virial W = -dE/dε   (eV/Å^3 and eV)

where the symmetric strain ε [B, 3, 3] acts on positions and cell as r' = r (1 + ε), h' = h (1 + ε)
(rows are vectors). This is ASE's sign convention: σ > 0 when the energy rises on expansion, i.e. a
stretched system (one that wants to contract) has positive stress, a compressed one negative.

Example
-------
>>> from ase.build import bulk
>>> from ase_eqgnn.graph import AtomicGraph
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", species=["Cu"], cutoff=4.0, features=16, layers=2)
>>> g = AtomicGraph.from_atoms(bulk("Cu", cubic=True)).with_neighbors(model.cutoff)
>>> out = model(g, forces=True, stress=True)
>>> out["energy"].shape, out["forces"].shape, out["stress"].shape
(torch.Size([1]), torch.Size([4, 3]), torch.Size([1, 3, 3]))
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .. import keys
from ..graph import AtomicGraph, edge_vectors
from ..indexing import scatter_rows
from .blocks import MLP, SpeciesIndex
from .neighborhood import Layered, build_neighborhood


class Potential(nn.Module):
    """Representation + energy head + E0/scale/shift, with forces and stress by autograd.

    Parameters
    ----------
    representation : module with ``out_features``, ``fast_layout`` (options of its fast neighbour
        layout, :mod:`.layouts`, or None for the edge list) and ``forward(species [N], edge_vec [E, 3],
        neighbourhood) -> [N, out_features]`` (invariant features; :mod:`.neighborhood`).
    species : atomic numbers the model knows (sorted ints); ``E0[k]`` belongs to ``species[k]``.
    cutoff : neighbour cutoff in Å (graphs must be built with it).
    name, hparams : recorded in :attr:`config` so :func:`ase_eqgnn.models.build_model` rebuilds it.
    head_hidden : width of the energy head's hidden layer.
    """

    def __init__(self, representation: nn.Module, species: List[int], cutoff: float, name: str,
                 hparams: Dict[str, Any], head_hidden: int):
        super().__init__()
        self.representation = representation
        self.species_index = SpeciesIndex(species)
        self.head = MLP([representation.out_features, head_hidden, 1])
        self._cutoff = float(cutoff)
        self._name = str(name)
        self._hparams = copy.deepcopy(dict(hparams))
        n = len(self.species_index.species)
        dtype = torch.get_default_dtype()
        # Filled by training (least-squares E0, data statistics); defaults are the identity.
        self.register_buffer("E0", torch.zeros(n, dtype=dtype))
        self.register_buffer("scale", torch.ones((), dtype=dtype))
        self.register_buffer("shift", torch.zeros((), dtype=dtype))
        # Shortest distance per element pair in the training data (ase_eqgnn.domain), set by the
        # trainer and stored in checkpoints beside the config; None when unknown.
        self.domain: Optional[Dict[str, float]] = None

    # ---------------------------------------------------------------- description
    @property
    def cutoff(self) -> float:
        """Neighbour cutoff, Å."""
        return self._cutoff

    @property
    def species(self) -> List[int]:
        """Atomic numbers the model knows, sorted; ``E0[k]`` is the reference energy of ``species[k]``."""
        return list(self.species_index.species)

    @property
    def config(self) -> Dict[str, Any]:
        """JSON-able ``{"name", "species", "cutoff", "hparams"}``: ``build_model(**config)`` rebuilds it."""
        return {"name": self._name, "species": self.species, "cutoff": self._cutoff,
                "hparams": copy.deepcopy(self._hparams)}

    @property
    def dtype(self) -> torch.dtype:
        return self.E0.dtype

    def extra_repr(self) -> str:
        return f"name={self._name!r}, cutoff={self._cutoff}"

    # ---------------------------------------------------------------- evaluation
    def neighborhood(self, edge_index: torch.Tensor, n_nodes: int, layout: str = "auto"):
        """The neighbourhood the representation works on (:func:`~.neighborhood.build_neighborhood`):
        ``layout="auto"`` its fast layout, ``"reference"`` the plain edge list."""
        return build_neighborhood(edge_index, n_nodes, layout, self.representation.fast_layout)

    def partial_neighborhood(self, edge_index: torch.Tensor, n_nodes: int, hop: torch.Tensor,
                             wanted_hops: int, layout: str = "auto"):
        """A neighbourhood for when only the energies of the atoms with ``hop <= wanted_hops`` are
        wanted (``hop`` [N]: graph distances from some atoms): each layer updates only the atoms those
        energies depend on (:class:`~.neighborhood.Layered`); the other E_i come out wrong."""
        return Layered(edge_index, n_nodes, hop, wanted_hops, int(self._hparams["layers"]), layout,
                       self.representation.fast_layout)

    def atom_energies(self, species: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                      batch: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor,
                      strain: Optional[torch.Tensor] = None, neighborhood: Any = None) -> torch.Tensor:
        """Per-atom energies E_i [N] (eV) of positions [N, 3] and cell [B, 3, 3] strained by ``strain``
        [B, 3, 3] (or unstrained: None); ``neighborhood``: from :meth:`neighborhood` for
        ``edge_index`` (None: built here).

        Pure tensor code without reads back to the host once the neighbourhood is built, so
        ``torch.compile`` can compile it whole: :meth:`forward` takes the compiled function as
        ``energy_fn``.
        """
        r, h = positions, cell
        if strain is not None:
            sym = 0.5 * (strain + strain.transpose(1, 2))
            if cell.shape[0] == 1:  # (a per-atom gather of the strain has a slow GPU gradient)
                r = positions + positions @ sym[0]
            else:
                r = positions + torch.einsum("ni,nij->nj", positions, sym.index_select(0, batch))
            h = cell + torch.bmm(cell, sym)
        vec = edge_vectors(r, h, batch, edge_index, shifts)
        return self.energies_from_edges(species, edge_index, vec, neighborhood)

    def energies_from_edges(self, species: torch.Tensor, edge_index: torch.Tensor,
                            edge_vec: torch.Tensor, neighborhood: Any = None) -> torch.Tensor:
        """Per-atom energies E_i [N] (eV) from species indices [N] (``self.species_index(numbers)``),
        edges [2, E] and their vectors r_ij = r_j - r_i [E, 3] (Å).

        The whole model is a function of the edge vectors: differentiate E_i with respect to
        ``edge_vec`` for pair forces (what LAMMPS's ML-IAP interface wants), or build the vectors from
        positions (:meth:`atom_energies`) for atomic forces.
        """
        if neighborhood is None:
            neighborhood = self.neighborhood(edge_index, species.shape[0])
        features = self.representation(species, edge_vec, neighborhood)
        e = self.head(features).squeeze(-1)
        return self.scale * e + self.shift + self.E0[species]

    def forward(self, graph: AtomicGraph, forces: bool = True, stress: bool = False,
                create_graph: bool = False,
                energy_fn: Optional[Callable[..., torch.Tensor]] = None,
                layout: str = "auto") -> Dict[str, torch.Tensor]:
        """Energies, and forces / stress when asked.

        Returns a dict with ``keys.ENERGY`` [B] eV, ``keys.ENERGIES`` [N] eV, and when asked
        ``keys.FORCES`` [N, 3] eV/Å, ``keys.STRESS`` [B, 3, 3] eV/Å^3 and ``keys.VIRIAL`` [B, 3, 3] eV.
        The stress of a structure whose cell is not 3-D periodic with nonzero volume is NaN (undefined;
        select valid rows by indexing, not by multiplying with a mask); its virial is still given.

        Floating-point inputs are cast to the model's dtype. ``create_graph=True`` keeps the graph of
        the derivatives (training with a force loss). With ``create_graph=False`` and forces or stress
        requested, the returned tensors are detached. ``energy_fn`` replaces :meth:`atom_energies`
        (same arguments), e.g. ``torch.compile(model.atom_energies)``. ``layout``: "auto" (the family's
        fast neighbour layout) or "reference" (the plain edge list, for debugging; same numbers).
        """
        if graph.edge_index is None or graph.shifts is None:
            raise ValueError("the graph has no neighbour list: call graph.with_neighbors(model.cutoff)")
        dtype = self.E0.dtype
        device = self.E0.device
        species = self.species_index(graph.numbers)
        positions = graph.positions.to(device=device, dtype=dtype)
        cell = graph.cell.to(device=device, dtype=dtype)
        batch = graph.batch.to(device)
        edge_index = graph.edge_index.to(device)
        shifts = graph.shifts.to(device)
        n_graphs = cell.shape[0]
        derivatives = forces or stress

        neighborhood = self.neighborhood(edge_index, species.shape[0], layout)
        with torch.set_grad_enabled(derivatives or torch.is_grad_enabled()):
            inputs = []
            if forces:
                if not positions.requires_grad:
                    positions = positions.detach().requires_grad_(True)
                inputs.append(positions)
            strain = None
            if stress:
                strain = torch.zeros(n_graphs, 3, 3, dtype=dtype, device=device, requires_grad=True)
                inputs.append(strain)
            energies = (energy_fn or self.atom_energies)(species, positions, cell, batch, edge_index,
                                                         shifts, strain, neighborhood)
            energy = scatter_rows(energies, batch, n_graphs)
            out = {keys.ENERGY: energy, keys.ENERGIES: energies}

            if derivatives:
                grads = torch.autograd.grad(
                    energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
                if forces:
                    out[keys.FORCES] = -grads[0]
                if stress:
                    dE_deps = grads[-1]
                    # |a . (b x c)|: elementwise, so no solver that may read back to the host
                    volume = torch.linalg.vecdot(cell[:, 0], torch.linalg.cross(cell[:, 1], cell[:, 2])).abs()
                    valid = graph.pbc.to(device).all(dim=-1) & (volume > 0)
                    safe = torch.where(valid, volume, torch.ones_like(volume))
                    out[keys.VIRIAL] = -dE_deps
                    out[keys.STRESS] = torch.where(valid[:, None, None], dE_deps / safe[:, None, None],
                                                   torch.full_like(dE_deps, float("nan")))
                if not create_graph:
                    out = {k: v.detach() for k, v in out.items()}
        return out


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["Potential", "count_parameters"]
