"""Frames -> cached graphs -> batches, and the data statistics (E0, scale) of a training set.

Each :class:`~ase_eqgnn.data.Frame` becomes a :class:`Sample` once: an
:class:`~ase_eqgnn.graph.AtomicGraph` with its neighbour list already built (cutoff in Å) plus the
targets. Batching is concatenation (:func:`collate`), so an epoch costs no neighbour search.

Targets inside a :class:`Batch` (all float64, eV / Å):

==============  =========  ============================================================
field           shape      meaning
==============  =========  ============================================================
``energy``      [B]        total energy, eV (0 where missing, see ``energy_mask``)
``forces``      [N, 3]     forces, eV/Å (0 where missing, see ``forces_mask`` [N])
``stress``      [B, 3, 3]  stress, eV/Å^3, ASE sign convention (see ``stress_mask`` [B])
``n_atoms``     [B]        atoms per structure (float64, for per-atom energies)
==============  =========  ============================================================

Batch order is a pure function of ``(seed, epoch)`` (:class:`EpochBatches`), so an interrupted run,
a resumed run and a run split over several processes see exactly the same global batches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.readers import Frame, read_dataset, split_dataset
from ..graph import AtomicGraph

__all__ = ["Sample", "Batch", "build_samples", "collate", "EpochBatches", "make_loader", "load_frames",
           "e0_by_number", "fit_e0", "force_rms", "energy_residual_std", "dataset_statistics",
           "voigt_to_full"]


def voigt_to_full(s: np.ndarray) -> np.ndarray:
    """ASE Voigt (xx, yy, zz, yz, xz, xy) [6] -> symmetric [3, 3]."""
    xx, yy, zz, yz, xz, xy = (float(v) for v in s)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


@dataclass
class Sample:
    """One frame ready for training: graph with neighbours (Å) and targets (eV, eV/Å, eV/Å^3)."""

    graph: AtomicGraph
    energy: Optional[float]
    forces: Optional[torch.Tensor]  # [n, 3] float64
    stress: Optional[torch.Tensor]  # [3, 3] float64

    @property
    def n_atoms(self) -> int:
        return self.graph.num_atoms


@dataclass
class Batch:
    """Several samples concatenated; see the module docstring for the fields."""

    graph: AtomicGraph
    energy: torch.Tensor
    energy_mask: torch.Tensor
    forces: torch.Tensor
    forces_mask: torch.Tensor
    stress: torch.Tensor
    stress_mask: torch.Tensor
    n_atoms: torch.Tensor
    weight: float = 1.0  #: 0 for a placeholder batch (a process with no share of a global batch)

    @property
    def num_graphs(self) -> int:
        return self.graph.num_graphs

    def to(self, device) -> "Batch":
        """Move every tensor to ``device`` (dtypes unchanged)."""
        return Batch(
            graph=self.graph.to(device),
            **{k: getattr(self, k).to(device) for k in ("energy", "energy_mask", "forces", "forces_mask",
                                                         "stress", "stress_mask", "n_atoms")},
            weight=self.weight,
        )


def _sorted_edges(i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edges in a canonical order (by i, j, shift) so cached graphs do not depend on chunking."""
    key = np.lexsort(np.concatenate([shifts.T.numpy()[::-1], j.numpy()[None], i.numpy()[None]]))
    key = torch.as_tensor(key)
    return torch.stack([i[key], j[key]]), shifts[key]


def build_samples(frames: Sequence[Frame], cutoff: float, chunk: int = 64) -> List[Sample]:
    """Frames -> samples with neighbour lists (cutoff Å) built once, ``chunk`` frames per search.

    Raises ``ValueError`` for an empty list or an invalid cutoff.
    """
    if len(frames) == 0:
        raise ValueError("no frames to build samples from")
    samples: List[Sample] = []
    for start in range(0, len(frames), chunk):
        part = frames[start:start + chunk]
        graphs = [AtomicGraph.from_arrays(f.positions, f.numbers, f.cell, f.pbc) for f in part]
        # near_origin: float32 training then resolves distances to the size of each structure, not
        # to its distance from the origin (positions far out in a file lose nothing)
        big = AtomicGraph.collate(graphs).with_neighbors(cutoff).near_origin()
        edge_graph = big.batch[big.edge_index[0]]
        order = torch.argsort(edge_graph, stable=True)
        counts = torch.bincount(edge_graph, minlength=len(part)).tolist()
        atom_offsets = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
        for g, f, idx, off in zip(graphs, part, torch.split(order, counts), atom_offsets):
            ei = big.edge_index[:, idx] - int(off)
            edge_index, shifts = _sorted_edges(ei[0], ei[1], big.shifts[idx])
            g.edge_index, g.shifts = edge_index, shifts
            g.positions = big.positions[int(off):int(off) + g.num_atoms].clone()
            samples.append(Sample(
                graph=g,
                energy=None if f.energy is None else float(f.energy),
                forces=None if f.forces is None else torch.as_tensor(np.asarray(f.forces, dtype=np.float64)),
                stress=None if f.stress is None or not np.all(f.pbc)
                else torch.as_tensor(voigt_to_full(f.stress)),
            ))
    return samples


def collate(samples: Sequence[Sample], weight: float = 1.0) -> Batch:
    """Concatenate samples into one :class:`Batch` (missing targets are zeros with a False mask)."""
    graph = AtomicGraph.collate([s.graph for s in samples])
    energy = torch.tensor([0.0 if s.energy is None else s.energy for s in samples], dtype=torch.float64)
    energy_mask = torch.tensor([s.energy is not None for s in samples])
    forces = torch.cat([s.forces if s.forces is not None else torch.zeros(s.n_atoms, 3, dtype=torch.float64)
                        for s in samples])
    forces_mask = torch.cat([torch.full((s.n_atoms,), s.forces is not None) for s in samples])
    stress = torch.stack([s.stress if s.stress is not None else torch.zeros(3, 3, dtype=torch.float64)
                          for s in samples])
    stress_mask = torch.tensor([s.stress is not None for s in samples])
    n_atoms = torch.tensor([s.n_atoms for s in samples], dtype=torch.float64)
    return Batch(graph, energy, energy_mask, forces, forces_mask, stress, stress_mask, n_atoms, weight)


# ---------------------------------------------------------------------------------------------------
# batch order


class EpochBatches(torch.utils.data.Sampler):
    """Deterministic batches of sample indices, sharded over processes.

    Epoch ``e`` uses the permutation ``numpy.random.default_rng([seed, e])`` (or the file order when
    ``shuffle=False``) cut into *global* batches of ``batch_size``. Process ``rank`` of
    ``world_size`` takes every ``world_size``-th index of each global batch; a process left with no
    index gets the batch's first index with weight 0 (so every process runs the same number of steps).
    Yields ``(indices, weight)`` pairs; call :meth:`set_epoch` before iterating.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("cannot batch an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> List[np.ndarray]:
        """This epoch's global batches (identical on every process)."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return [order[k:k + self.batch_size] for k in range(0, self.n, self.batch_size)]

    def __iter__(self) -> Iterator[Tuple[List[int], float]]:
        for batch in self.global_batches():
            mine = batch[self.rank::self.world_size]
            if len(mine) == 0:
                yield [int(batch[0])], 0.0
            else:
                yield [int(i) for i in mine], 1.0

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        indices, weight = item
        return [self.samples[i] for i in indices], weight


def _collate_item(items):
    (samples, weight), = items
    return collate(samples, weight)


def make_loader(samples: Sequence[Sample], batches: EpochBatches, num_workers: int = 0
                ) -> torch.utils.data.DataLoader:
    """A DataLoader yielding :class:`Batch` objects in the order given by ``batches``."""
    return torch.utils.data.DataLoader(
        _Indexed(samples), sampler=batches, batch_size=1, collate_fn=_collate_item,
        num_workers=num_workers, persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------------
# statistics


def _composition(samples: Sequence[Sample], species: Sequence[int]) -> np.ndarray:
    """Counts matrix [n_frames, n_species]."""
    index = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(samples), len(species)))
    for row, s in enumerate(samples):
        for z, c in zip(*np.unique(s.graph.numbers.numpy(), return_counts=True)):
            if int(z) not in index:
                raise ValueError(f"element Z={int(z)} in the data is not among the model's species {list(species)}")
            counts[row, index[int(z)]] = c
    return counts


def fit_e0(samples: Sequence[Sample], species: Sequence[int]) -> np.ndarray:
    """Per-species reference energies [n_species] (eV) by least squares: ``counts @ E0 ≈ E``.

    ``counts`` is the [frames, species] composition matrix. When the compositions do not determine
    every E0 (e.g. one molecule in every frame), the minimum-norm solution is returned, which still
    reproduces the mean energy of each composition.
    """
    with_e = [s for s in samples if s.energy is not None]
    if not with_e:
        raise ValueError("cannot fit E0: no training frame has an energy")
    a = _composition(with_e, species)
    y = np.array([s.energy for s in with_e])
    e0, *_ = np.linalg.lstsq(a, y, rcond=None)
    return e0


def force_rms(samples: Sequence[Sample]) -> Optional[float]:
    """Root mean square of all force components (eV/Å) in ``samples``; None without forces."""
    forces = [s.forces for s in samples if s.forces is not None]
    if not forces:
        return None
    f = torch.cat(forces)
    return float(torch.sqrt((f ** 2).mean()))


def energy_residual_std(samples: Sequence[Sample], species: Sequence[int], e0: np.ndarray) -> Optional[float]:
    """Standard deviation of the per-atom energy left after E0 (eV/atom); None without energies."""
    with_e = [s for s in samples if s.energy is not None]
    if len(with_e) < 2:
        return None
    a = _composition(with_e, species)
    y = np.array([s.energy for s in with_e])
    return float(np.std((y - a @ e0) / a.sum(axis=1)))


def dataset_statistics(samples: Sequence[Sample], species: Sequence[int],
                       e0: Optional[Dict[int, float]] = None, scale: Optional[float] = None
                       ) -> Tuple[np.ndarray, float, float]:
    """``(E0 [n_species] eV, scale eV, shift eV)`` of a training set.

    E0: given values (by atomic number), else least squares (:func:`fit_e0`). scale: given, else the
    RMS of the training forces, else the std of the per-atom energy residual, else 1. shift: 0.
    """
    if e0 is not None:
        missing = [z for z in species if z not in e0]
        if missing:
            raise ValueError(f"e0 is given but lacks element(s) Z={missing}")
        e0_arr = np.array([float(e0[z]) for z in species])
    else:
        e0_arr = fit_e0(samples, species)
    if scale is None:
        scale = force_rms(samples)
        if scale is None or not scale > 0:
            scale = energy_residual_std(samples, species, e0_arr)
        if scale is None or not math.isfinite(scale) or not scale > 0:
            scale = 1.0
    return e0_arr, float(scale), 0.0


# ---------------------------------------------------------------------------------------------------
# what a TrainConfig asks for


def load_frames(cfg) -> Tuple[List[Frame], List[Frame], Optional[List[Frame]]]:
    """(train, valid, test) frames as a :class:`~.config.TrainConfig` describes them (explicit files
    or a seeded split of ``data``)."""
    if not cfg.data:
        raise ValueError("no training data: set 'data' in the config or pass --data PATH")
    for key in ("data", "valid_data", "test_data", "energies", "valid_energies", "test_energies", "topology"):
        path = getattr(cfg, key)
        if path and os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
            raise ValueError(f"{key} {path!r} is not a regular file (a device or a pipe cannot be read "
                             "as a data set)")
    opts = dict(format=cfg.format, energy_unit=cfg.energy_unit, length_unit=cfg.length_unit)
    frames = read_dataset(cfg.data, energies=cfg.energies, topology=cfg.topology, index=cfg.index, **opts)
    if cfg.valid_data:
        train_frames = frames
        valid_frames = read_dataset(cfg.valid_data, energies=cfg.valid_energies, topology=cfg.topology, **opts)
    elif cfg.valid_fraction > 0:
        if len(frames) < 2:
            raise ValueError(f"{cfg.data} has {len(frames)} frame: too few to split off a validation set "
                             "(give valid_data or set valid_fraction 0)")
        train_frames, valid_frames = split_dataset(frames, cfg.valid_fraction, seed=cfg.seed,
                                                   contiguous=cfg.split == "contiguous")
    else:
        train_frames, valid_frames = frames, []
    test_frames = (read_dataset(cfg.test_data, energies=cfg.test_energies, topology=cfg.topology, **opts)
                   if cfg.test_data else None)
    return train_frames, valid_frames, test_frames


def e0_by_number(e0: Optional[Dict]) -> Optional[Dict[int, float]]:
    """A config's ``e0`` ({"Cu": -3.5} or {29: -3.5}) keyed by atomic number; None stays None."""
    if e0 is None:
        return None
    from ase.data import atomic_numbers

    out = {}
    for key, value in e0.items():
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            z = int(key)
        elif key in atomic_numbers:
            z = atomic_numbers[key]
        else:
            raise ValueError(f"e0: unknown element {key!r} (use symbols such as 'Cu' or atomic numbers)")
        out[z] = float(value)
    return out
