"""The model as LAMMPS needs it: loaded from a safe checkpoint, evaluated on a pair list.

LAMMPS hands over a list of pairs ``(i, j)`` with vectors ``r_ij = x_j - x_i`` among local and ghost
atoms. The potential is a function of those vectors alone (``Potential.energies_from_edges``), so
with ``E_i`` the per-atom energies and ``S`` the atoms whose energies are counted

    g_e = d(sum_{i in S} E_i) / d r_e                       (eV/Å, one row per pair e = (i, j))
    F_i = sum_{e: i_e = i} g_e - sum_{e: j_e = i} g_e          (eV/Å; x_i enters r_e with sign -1)
    W   = -sum_e r_e (x) g_e                                   (eV, the virial of those energies)

which is what ML-IAP's ``update_pair_forces`` (``f[i] += g``, ``f[j] -= g``) and its virial tally
do, and what the ``fix external`` runner folds onto atoms itself.

Models travel as the bytes of a :func:`ase_eqgnn.save_model` file and are rebuilt by
:func:`ase_eqgnn.load_model` (a torch file read with ``weights_only=True``): no pickled code.

Example
-------
>>> import torch
>>> from ase_eqgnn.models import build_model
>>> model, blob = load_potential(build_model("egnn", ["Cu"], cutoff=3.0, features=8, layers=1))
>>> species = torch.zeros(2, dtype=torch.long)
>>> edges = torch.tensor([[0, 1], [1, 0]])
>>> vec = torch.tensor([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]], dtype=model.dtype)
>>> energies, g = energies_and_pair_gradients(model, species, edges, vec)
>>> bool(torch.allclose(g[0], -g[1]))  # Newton's third law for a symmetric pair
True
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Optional, Tuple, Union

import torch

from ..checkpoint import load_model, save_model
from ..errors import AtomsTooCloseError
from ..models.potential import Potential
from ..pretrained import resolve_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}

ModelLike = Union[str, "os.PathLike[str]", Potential, bytes]


def resolve_dtype(dtype) -> str:
    """"float32"/"float64" (or the torch dtype) -> its name; ValueError otherwise."""
    for name, value in DTYPES.items():
        if dtype == name or dtype is value:
            return name
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def resolve_device(device) -> torch.device:
    """A torch device that exists here; ValueError naming the problem otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def _load_bytes(blob: bytes) -> Potential:
    # load_model reads a path: the bytes go through a private temporary file.
    with tempfile.TemporaryDirectory(prefix="eqgnn-lammps-") as tmp:
        path = os.path.join(tmp, "model.pt")
        with open(path, "wb") as f:
            f.write(blob)
        return load_model(path, map_location="cpu")


def _dump_bytes(model: Potential) -> bytes:
    with tempfile.TemporaryDirectory(prefix="eqgnn-lammps-") as tmp:
        path = os.path.join(tmp, "model.pt")
        save_model(model, path)
        with open(path, "rb") as f:
            return f.read()


def load_potential(model: ModelLike) -> Tuple[Potential, bytes]:
    """The potential (in eval mode, on the CPU) and the bytes of its checkpoint file.

    ``model``: a checkpoint path, a bundled potential's name (``eqgnn-models``), a
    :class:`~ase_eqgnn.models.potential.Potential` (serialised, so the caller's object is untouched),
    or the bytes of a checkpoint file. Whatever is given, the returned model is the one rebuilt
    from the returned bytes, so a file written from them holds exactly what ran.
    """
    if isinstance(model, Potential):
        blob = _dump_bytes(copy.deepcopy(model).cpu())
    elif isinstance(model, (bytes, bytearray)):
        blob = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        with open(resolve_model(os.fspath(model), kind="potential"), "rb") as f:
            blob = f.read()
    else:
        raise ValueError(f"model must be a checkpoint path, a bundled name or an ase_eqgnn "
                         f"Potential, got {type(model).__name__}")
    loaded = _load_bytes(blob)
    if getattr(loaded, "beads", None) is not None:  # its priors act on the bead chain, not on pairs
        raise ValueError("a coarse-grained model (priors on its chain of beads) cannot run through "
                         "LAMMPS's pair interface; run it with eqgnn-md or the ASE calculator")
    return loaded, blob


def prepare(model: Potential, dtype: str, device: torch.device) -> Potential:
    """``model`` in ``dtype`` on ``device``, in eval mode, parameters frozen (only the pair vectors
    need gradients)."""
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def receptive_field(model: Potential) -> float:
    """layers x cutoff (Å): how far a per-atom energy can see through message passing."""
    return int(model.config["hparams"]["layers"]) * float(model.cutoff)


def hop_distances(edge_index: torch.Tensor, n_nodes: int, sources: torch.Tensor,
                  max_hops: int) -> torch.Tensor:
    """Graph distance (number of pairs) of every node from the nearest of ``sources``, [n_nodes]
    int64, counted up to ``max_hops``; farther nodes get ``max_hops + 1``."""
    far = max_hops + 1
    hops = torch.full((n_nodes,), far, dtype=torch.long, device=edge_index.device)
    hops[sources] = 0
    i, j = edge_index[0], edge_index[1]
    for step in range(1, max_hops + 1):
        reached = torch.zeros(n_nodes, dtype=torch.bool, device=edge_index.device)
        reached[j[hops.index_select(0, i) == step - 1]] = True
        reached[i[hops.index_select(0, j) == step - 1]] = True
        hops[reached & (hops > step)] = step
    return hops


def prune_to_hops(edge_index: torch.Tensor, n_nodes: int, sources: torch.Tensor, hops: int):
    """The part of a graph that an L-layer message-passing energy of ``sources`` can see, L = ``hops``.

    The energy of a source depends on the layer-l features of nodes at most L - l pairs away, and
    those come from the pairs (i, j) into them: so only nodes within L hops and pairs whose centre i
    is within L - 1 hops matter. The rest (ghost atoms beyond the receptive field, the skin, the
    pairs into the outermost atoms) is dropped; a dropped pair's derivative is exactly zero. Returns
    ``(nodes, pairs, edge_index, hop)``: the kept nodes (old indices, ascending), a bool mask of the
    kept pairs, the kept pairs renumbered, and the kept nodes' hop distances.
    """
    hop = hop_distances(edge_index, n_nodes, sources, hops)
    pairs = hop.index_select(0, edge_index[0]) < hops
    nodes = (hop <= hops).nonzero().squeeze(1)
    renumber = torch.full((n_nodes,), -1, dtype=torch.long, device=edge_index.device)
    renumber[nodes] = torch.arange(nodes.numel(), device=edge_index.device)
    return nodes, pairs, renumber[edge_index[:, pairs]], hop.index_select(0, nodes)


def owned_and_neighbours(edge_index: torch.Tensor, n_nodes: int, owned: torch.Tensor):
    """The graph an exchange of ghost features needs (:mod:`.halo`): the pairs centred on ``owned``
    atoms (indices ``0..len(owned)-1``, as LAMMPS numbers its own atoms first) and the atoms they
    join. Returns ``(nodes, pairs, edge_index, hop)`` as :func:`prune_to_hops` does; ``hop`` is 0
    for owned atoms and 1 for ghosts."""
    pairs = edge_index[0] < owned.numel()
    used = torch.zeros(n_nodes, dtype=torch.bool, device=edge_index.device)
    used[owned] = True
    used[edge_index[1, pairs]] = True
    nodes = used.nonzero().squeeze(1)  # (a mask, not torch.unique: no sort of every pair)
    renumber = torch.full((n_nodes,), -1, dtype=torch.long, device=edge_index.device)
    renumber[nodes] = torch.arange(nodes.numel(), device=edge_index.device)
    return nodes, pairs, renumber[edge_index[:, pairs]], (nodes >= owned.numel()).long()


def check_min_distance(edge_vec: torch.Tensor, min_distance: float, name_pair) -> None:
    """AtomsTooCloseError if some pair is shorter than ``min_distance`` (Å); ``name_pair(e)`` says
    which atoms pair ``e`` joins (for the message)."""
    if edge_vec.shape[0] == 0 or min_distance <= 0:
        return
    lengths = edge_vec.detach().norm(dim=1)
    e = int(torch.argmin(lengths))
    if float(lengths[e]) < min_distance:
        raise AtomsTooCloseError(f"{name_pair(e)} are {float(lengths[e]):.3g} Å apart, closer than "
                                 f"min_distance={min_distance} Å: overlapping atoms")


def energies_and_pair_gradients(model: Potential, species: torch.Tensor, edge_index: torch.Tensor,
                                edge_vec: torch.Tensor, hop: Optional[torch.Tensor] = None,
                                counted_hops: int = 0, neighborhood=None
                                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-atom energies E_i [N] and g = d(sum_{i counted} E_i)/d edge_vec [E, 3], both detached.

    ``species`` [N] are the model's species indices, ``edge_index`` [2, E] the pairs (i, j),
    ``edge_vec`` [E, 3] their vectors r_j - r_i in the model's dtype and device. ``hop`` [N]: graph
    distances from the atoms that matter (:func:`prune_to_hops`); then only the atoms with
    ``hop <= counted_hops`` are counted, and their E_i are the only exact ones: each layer updates
    only the atoms the counted energies still depend on (:class:`~ase_eqgnn.models.neighborhood.Layered`).
    ``hop=None``: every atom is counted and exact. ``neighborhood``: the one to evaluate on instead
    (one with a ``halo``, :mod:`.halo`, which must run even where there are no atoms: its exchanges
    are collective).
    """
    if species.shape[0] == 0 and neighborhood is None:  # (a rank without atoms: nothing to do)
        return (torch.zeros(0, dtype=edge_vec.dtype, device=edge_vec.device),
                torch.zeros_like(edge_vec))
    if hop is not None:
        hop = hop.to(edge_index.device)
        if neighborhood is None:
            neighborhood = model.partial_neighborhood(edge_index, species.shape[0], hop, counted_hops)
    halo = getattr(neighborhood, "halo", None)
    vec = edge_vec.detach().requires_grad_(True)
    with torch.enable_grad():
        energies = model.energies_from_edges(species, edge_index, vec, neighborhood)
        total = energies.sum() if hop is None else energies[hop <= counted_hops].sum()
        grad = None
        if total.requires_grad and (vec.shape[0] > 0 or halo is not None):
            (grad,) = torch.autograd.grad(total, vec, allow_unused=True)
    if halo is not None:
        halo.finish()  # the backward exchanges autograd skipped (a rank without pairs) still run
    grad = torch.zeros_like(vec) if grad is None else grad
    return energies.detach(), grad.detach()


__all__ = ["DTYPES", "hop_distances", "prune_to_hops", "owned_and_neighbours", "check_min_distance",
           "load_potential", "prepare", "resolve_dtype", "resolve_device", "receptive_field",
           "energies_and_pair_gradients"]
