"""A coarse-grained potential: a network of any family on beads plus CGnet-style priors.

For the beads ``X`` [n_beads, 3] (Å) of one molecule (each bead type a species, see
:mod:`.beads`), the energy is

    U(X) = U_net(X) + U_prior(X)          (eV; forces -dU/dX and stress by autograd)

where ``U_net`` is an ordinary :class:`~ase_eqgnn.models.Potential` (egnn, painn or tp) and
``U_prior`` the harmonic bonds, angles and short-range repulsion of :class:`~.priors.CGPrior`.
:class:`CGPotential` *is* a ``Potential`` (the network's modules, the prior added to the per-bead
energies), so the calculator, the trainer, ``eqgnn-md`` and the checkpoint module take it as any
other potential: ``EqGNNCalculator("cg.pt")`` and ``EqGNNCalculator.from_pretrained("ala2-cg")``.

Model file. :func:`ase_eqgnn.save_model` stores the network's tensors as for any potential and the
coarse-grained part as data in the config (key ``"cg"``, format version 3, so an older ase_eqgnn
refuses the file instead of silently dropping the prior)::

    "cg": {"beads": {"names", "types", "masses"},         (BeadSet: bead i has Atoms number
                                                           1 + index of its type among the types)
           "map": CGMap.to_dict() or null,                 (atoms -> beads, for back-mapping)
           "prior": CGPrior.to_dict(),                     (bonds, angles, pairs, constants)
           "temperature_K": T}                             (the data's temperature; MD default)

Loading checks this record like the rest of the config (:func:`check_cg_record`): finite prior
constants within :data:`PRIOR_BOUNDS`, indices within the chain, the bead types equal to the
network's species, the map consistent with the beads.

The beads of every structure must be one molecule in the bead order of the record, not periodic.
The prior acts on plain position differences; each structure's chain must be connected by pairs
within the cutoff (a bond longer than the cutoff means the molecule has broken apart: an
:class:`~ase_eqgnn.errors.OutOfDomainError`).

Example
-------
>>> import torch
>>> from ase_eqgnn.models import build_model
>>> from ase_eqgnn.cg.beads import BeadSet
>>> from ase_eqgnn.cg.priors import CGPrior
>>> x = torch.tensor([[0., 0, 0], [1.5, 0, 0], [1.5, 1.5, 0], [3.0, 1.5, 0.3]], dtype=torch.float64)
>>> g = torch.Generator().manual_seed(0)
>>> prior = CGPrior.fit(x + 0.02 * torch.randn(200, 4, 3, dtype=torch.float64, generator=g), 300.0)
>>> beads = BeadSet(["a", "b", "c", "d"], ["A", "B", "B", "A"], [14.0, 13.0, 13.0, 14.0])
>>> net = build_model("painn", species=[1, 2], cutoff=5.0, features=8, layers=1)
>>> model = CGPotential(net, prior, beads)
>>> model.config["cg"]["beads"]["types"], model.species
(['A', 'B', 'B', 'A'], [1, 2])
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import OutOfDomainError
from ..graph import AtomicGraph
from ..models.potential import Potential
from .beads import BeadSet
from .maps import CGMap
from .priors import CGPrior

__all__ = ["CGPotential", "check_cg_record", "PRIOR_BOUNDS", "MAX_BEADS"]

#: Largest molecule (beads) a CG model file may describe.
MAX_BEADS = 10_000
#: Inclusive bounds of the prior's constants a model file may hold: wide around anything Boltzmann
#: inversion gives for molecules (bonds 1-5 Å, k of 1-100 eV/Å^2), far from values that would make
#: MD blow up in one step or overflow float32.
PRIOR_BOUNDS = {
    "r0": (0.1, 20.0), "sigma": (0.1, 20.0),             # Å
    "k_bond": (1e-6, 1e5), "k_angle": (1e-6, 1e5),      # eV/Å^2, eV/rad^2
    "theta0": (0.0, math.pi),                           # rad
    "epsilon": (0.0, 10.0),                             # eV
    "exponent": (1, 24),
    "temperature_K": (1.0, 1e4),
    "dihedral_cos": (-10.0, 10.0), "dihedral_sin": (-10.0, 10.0),   # eV
}
#: Highest order of a dihedral's Fourier series a model file may hold.
MAX_DIHEDRAL_ORDER = 12


def _in_bounds(name: str, values) -> None:
    low, high = PRIOR_BOUNDS[name]
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)) or np.any(arr < low) or np.any(arr > high):
        bad = arr[~(np.isfinite(arr) & (arr >= low) & (arr <= high))][0]
        raise ValueError(f"prior {name} must lie in [{low:g}, {high:g}], found {bad!r}")


def check_cg_record(record: Any, species) -> Dict[str, Any]:
    """The coarse-grained section of a model file as objects: ``{"beads": BeadSet, "map": CGMap or
    None, "prior": CGPrior, "temperature_K": float}``. ValueError naming the first implausible
    entry: unknown keys, a molecule over :data:`MAX_BEADS` beads, prior constants outside
    :data:`PRIOR_BOUNDS`, prior or map of another number of beads, bead types other than the
    network's ``species``."""
    if not isinstance(record, dict) or set(record) != {"beads", "map", "prior", "temperature_K"}:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"the coarse-grained section must have beads, map, prior and temperature_K, "
                         f"found {keys}")
    beads_data, prior_data = record["beads"], record["prior"]
    if not isinstance(beads_data, dict) or not isinstance(prior_data, dict):
        raise ValueError("the coarse-grained section's beads and prior must be objects")
    if len(beads_data.get("names", [])) > MAX_BEADS:
        raise ValueError(f"the coarse-grained section describes more than {MAX_BEADS} beads")
    beads = BeadSet.from_dict(beads_data)
    _in_bounds("temperature_K", record["temperature_K"])
    for name in ("r0", "sigma", "k_bond", "k_angle", "theta0", "epsilon", "exponent", "temperature_K"):
        if name not in prior_data:
            raise ValueError(f"the prior lacks {name}")
        _in_bounds(name, prior_data[name])
    for name in ("dihedral_cos", "dihedral_sin"):
        values = prior_data.get(name, [])
        if np.asarray(values, dtype=np.float64).size:
            _in_bounds(name, values)
            if np.asarray(values, dtype=np.float64).ndim != 2 or \
                    np.asarray(values).shape[1] > MAX_DIHEDRAL_ORDER:
                raise ValueError(f"prior {name} must be [dihedrals, order <= {MAX_DIHEDRAL_ORDER}]")
    if not float(prior_data["exponent"]).is_integer():
        raise ValueError(f"prior exponent must be an integer, found {prior_data['exponent']!r}")
    for name, width in (("bonds", 2), ("angles", 3), ("pairs", 2), ("dihedrals", 4)):
        t = np.asarray(prior_data.get(name, []), dtype=np.float64)
        if t.size > 3 * MAX_BEADS ** 2 or (t.size and (t.ndim != 2 or t.shape[1] != width)) or \
                (t.size and (not np.all(t == np.round(t)) or t.min() < 0 or t.max() >= beads.n_beads)):
            raise ValueError(f"prior {name} must be [count, {width}] indices of the {beads.n_beads} beads")
    prior = CGPrior.from_dict(prior_data)
    if prior.n_beads != beads.n_beads:
        raise ValueError(f"the prior's chain has {prior.n_beads} beads, the bead set {beads.n_beads}")
    if float(record["temperature_K"]) != prior.temperature_K:
        raise ValueError("the record's temperature differs from the prior's")
    cg_map = None
    if record["map"] is not None:
        if not isinstance(record["map"], dict):
            raise ValueError("the coarse-grained section's map must be an object or null")
        cg_map = CGMap.from_dict(record["map"])
        if cg_map.n_beads != beads.n_beads or cg_map.types != beads.types:
            raise ValueError(f"the CG map has {cg_map.n_beads} beads of types {cg_map.types}, the "
                             f"bead set {beads.n_beads} of types {beads.types}")
    types = sorted({int(z) for z in beads.numbers})
    if types != [int(z) for z in species]:
        raise ValueError(f"the bead types are species {types}, the network knows {list(species)}")
    return {"beads": beads, "map": cg_map, "prior": prior, "temperature_K": float(record["temperature_K"])}


class CGPotential(Potential):
    """A :class:`Potential` on beads whose per-bead energies include a :class:`CGPrior`.

    Parameters
    ----------
    net : the network (any family), species = the bead type codes of ``beads``; its modules and
        buffers are taken over (not copied).
    prior : the prior terms of the molecule's chain.
    beads : the molecule's beads (order, types, masses).
    cg_map : the atoms -> beads map the data came from (recorded for back-mapping), or None.
    """

    def __init__(self, net: Potential, prior: CGPrior, beads: BeadSet, cg_map: Optional[CGMap] = None):
        config = net.config
        record = {"beads": beads.to_dict(), "map": None if cg_map is None else cg_map.to_dict(),
                  "prior": prior.to_dict(), "temperature_K": prior.temperature_K}
        check_cg_record(record, config["species"])  # the same checks as on loading
        with torch.random.fork_rng(devices=[]):  # the head built here is replaced by the net's
            super().__init__(net.representation, config["species"], config["cutoff"], config["name"],
                             config["hparams"], config["hparams"]["head_hidden"])
        self.head = net.head
        for name in ("E0", "scale", "shift"):
            setattr(self, name, getattr(net, name))
        self.domain = net.domain
        self.prior = prior.to(device=net.E0.device, dtype=net.E0.dtype)
        self.beads, self.cg_map = beads, cg_map
        self._record = record  # float64 constants as fitted, whatever dtype the module moves to
        self.register_buffer("bead_numbers", torch.as_tensor(beads.numbers, dtype=torch.long),
                             persistent=False)

    @property
    def temperature_K(self) -> float:
        """The temperature of the data the prior was fitted to (K)."""
        return self.prior.temperature_K

    @property
    def config(self) -> Dict[str, Any]:
        """The network's config plus the coarse-grained record (module docstring)."""
        out = super().config
        out["cg"] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._record.items()}
        return out

    def net_config(self) -> Dict[str, Any]:
        """The network's config alone (``build_model(**net_config())`` rebuilds the network)."""
        return super().config

    # ---------------------------------------------------------------- evaluation
    def _check_graph(self, graph: AtomicGraph) -> None:
        n, numbers = self.beads.n_beads, graph.numbers
        b = int(graph.num_graphs)
        if bool(graph.pbc.any()):
            raise ValueError("a coarse-grained potential takes non-periodic bead structures "
                             "(pbc=False)")
        if numbers.shape[0] != b * n or bool(
                (numbers.view(b, n) != self.bead_numbers.to(numbers.device)).any()):
            raise ValueError(f"a structure is not this model's molecule: it needs {n} beads with "
                             f"numbers {self.beads.numbers.tolist()} in this order "
                             "(ase_eqgnn.cg.beads_to_atoms makes such Atoms)")
        if graph.edge_index is None or (torch.cuda.is_available() and
                                        torch.cuda.is_current_stream_capturing()):
            return
        edges = graph.edge_index[0] * numbers.shape[0] + graph.edge_index[1]
        first = (torch.arange(b, device=numbers.device) * n)[:, None]
        bonds = self.prior.bonds.to(numbers.device)
        keys = (first + bonds[:, 0]) * numbers.shape[0] + (first + bonds[:, 1])
        linked = torch.isin(keys.reshape(-1), edges)
        if not bool(linked.all()):
            k = int(torch.nonzero(~linked)[0])
            s, (i, j) = k // len(bonds), bonds[k % len(bonds)].tolist()
            raise OutOfDomainError(f"beads {i} and {j} of structure {s} are bonded in the prior but "
                                   f"farther apart than the cutoff {self.cutoff} Å: the CG molecule has "
                                   "broken apart (a time step too long or a temperature too high)")

    def forward(self, graph: AtomicGraph, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """As :meth:`Potential.forward`, after checking that every structure is this molecule."""
        self._check_graph(graph)
        return super().forward(graph, *args, **kwargs)

    def atom_energies(self, species, positions, cell, batch, edge_index, shifts, strain=None,
                      neighborhood=None) -> torch.Tensor:
        """The network's per-bead energies plus the prior's (shared among each term's beads)."""
        energies = super().atom_energies(species, positions, cell, batch, edge_index, shifts, strain,
                                         neighborhood)
        r = positions
        if strain is not None:  # the same homogeneous deformation the network sees
            sym = 0.5 * (strain + strain.transpose(1, 2))
            r = positions + torch.einsum("ni,nij->nj", positions, sym.index_select(0, batch))
        n = self.beads.n_beads
        return energies + self.prior.bead_energies(r.reshape(-1, n, 3)).reshape(-1)
