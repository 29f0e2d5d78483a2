"""Training a coarse-grained potential with the package's trainer (``eqgnn-train --cg-map NAME``).

With ``cg_map`` set in a :class:`~ase_eqgnn.train.TrainConfig`, the trainer reads the all-atom
frames as usual (train, validation and test split at the atom level), and :func:`prepare_cg_training`
turns each into a bead frame by force matching (:mod:`.forcematch`: positions ``C x``, forces ``D f``,
no energy). The network trains on the force term alone: the mapped frames carry no energy, as the
free-energy surface has no reference energy. :meth:`CGTraining.attach` wraps the freshly built
network with the priors fitted to the training beads at ``temperature`` (Boltzmann inversion,
:class:`~.priors.CGPrior`), so the network learns the mean force minus the priors' force and the
trainer's ``best.pt`` is a CG model file (:mod:`.potential`).

``cg_map`` is

- a map name of :func:`~.maps.build_map` (``ala2-5bead``, ``residue``, ``residue-com``, ``ca``),
  built from the topology of ``topology``, else of ``data`` when it is a trajectory file with one
  (``.h5``, ``.pdb``), else, for ``ala2-5bead``, of the bundled alanine dipeptide (whose atom order
  the bundled OpenMM data follow); the topology's elements must be those of the frames;
- a ``.json`` file holding a :class:`~.maps.CGMap` (``CGMap.to_json``), for any molecule;
- ``data``: ``data`` (and ``valid_data``/``test_data``) are CG data sets already mapped
  (:func:`~.forcematch.save_cg_dataset` files, which record their map and temperature).

Example::

    eqgnn-train --data training/data/ala2_train.h5 --energies training/data/ala2_train.npz \\
        --cg-map ala2-5bead --temperature 300 --out runs/ala2_cg --max-epochs 20
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data import Frame
from .beads import BeadSet
from .forcematch import cg_frames, load_cg_dataset
from .maps import CGMap, build_map

__all__ = ["CGTraining", "load_cg_frames", "prepare_cg_training", "resolve_cg_map", "MAP_NAMES", "TEMPERATURE_RANGE_K"]

MAP_NAMES = ("ala2-5bead", "residue", "residue-cog", "residue-com", "ca")
#: Temperatures (K) a CG training run accepts.
TEMPERATURE_RANGE_K = (1.0, 10_000.0)


def check_temperature(value) -> float:
    low, high = TEMPERATURE_RANGE_K
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"temperature must be a number of kelvin in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _topology(data: Optional[str], topology: Optional[str], name: str):
    import mdtraj as md

    for path in (topology, data):
        if path and Path(path).suffix.lower() in (".h5", ".pdb", ".pdb.gz", ".mol2", ".psf", ".prmtop",
                                                   ".gro"):
            try:
                return md.load_topology(str(path))
            except Exception as err:  # mdtraj raises many kinds for unreadable files
                raise ValueError(f"cannot read a topology from {path} for the CG map {name!r}: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if name == "ala2-5bead":
        from ..structures import structure_path
        return md.load_topology(str(structure_path("ala2")))
    raise ValueError(f"the CG map {name!r} needs a topology: give 'topology' (a PDB of the molecule) "
                     "or data in a format that has one (.h5)")


def resolve_cg_map(spec: str, numbers: np.ndarray, data: Optional[str] = None,
                   topology: Optional[str] = None) -> CGMap:
    """The :class:`CGMap` that ``spec`` names (module docstring) for frames of atomic ``numbers``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"cg_map must be a map name or a .json file, got {spec!r}")
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ValueError(f"CG map file {spec} does not exist")
        try:
            cg_map = CGMap.from_json(Path(spec).read_text())
        except (ValueError, TypeError) as err:
            raise ValueError(f"CG map file {spec} is not a valid map: {err}") from None
    elif spec in MAP_NAMES:
        top = _topology(data, topology, spec)
        elements = np.array([a.element.atomic_number for a in top.atoms])
        if len(elements) != len(numbers) or np.any(elements != numbers):
            raise ValueError(f"the CG map {spec!r} was built for a molecule of {len(elements)} atoms "
                             f"that differs from the data's {len(numbers)} (elements or order); give "
                             "the data's own topology")
        cg_map = build_map(spec, top)
    else:
        raise ValueError(f"unknown CG map {spec!r}: choose one of {', '.join(MAP_NAMES)}, a .json "
                         "map file, or 'data' for CG data sets")
    if cg_map.n_atoms != len(numbers):
        raise ValueError(f"the CG map has {cg_map.n_atoms} atoms, the data {len(numbers)}")
    return cg_map


@dataclass
class CGTraining:
    """The coarse-graining of one training run: map, beads, temperature and the training beads."""

    cg_map: CGMap
    beads: BeadSet
    temperature_K: float
    train_positions: np.ndarray  # [frames, n_beads, 3] Å, for the priors

    def attach(self, net):
        """The CG potential of network ``net`` (species = bead types) with priors fitted to the
        training beads (:class:`~.potential.CGPotential`)."""
        from .potential import CGPotential
        from .priors import CGPrior

        prior = CGPrior.fit(self.train_positions, self.temperature_K)
        return CGPotential(net, prior, self.beads, self.cg_map)

    def describe(self) -> str:
        return (f"coarse-grained: {self.cg_map.n_atoms} atoms -> {self.beads.n_beads} beads "
                f"({len(self.beads.type_names)} types), priors at {self.temperature_K:g} K, forces only")


def prepare_cg_training(cfg, train: Sequence[Frame], valid: Sequence[Frame],
                        test: Optional[Sequence[Frame]]
                        ) -> Tuple[List[Frame], List[Frame], Optional[List[Frame]], CGTraining]:
    """Bead frames for the three splits and the run's :class:`CGTraining` (``cfg.cg_map`` set).
    ValueError for an unknown map, a map of another molecule, frames without forces."""
    temperature = check_temperature(cfg.temperature)
    if not train:
        raise ValueError(f"no training frames in {cfg.data}")
    cg_map = resolve_cg_map(cfg.cg_map, np.asarray(train[0].numbers), cfg.data, cfg.topology)
    beads = BeadSet.from_map(cg_map, train[0].numbers)
    out = [cg_frames(list(frames), cg_map, beads) if frames else [] for frames in (train, valid)]
    test_out = cg_frames(list(test), cg_map, beads) if test else (None if test is None else [])
    positions = np.stack([f.positions for f in out[0]]).astype(np.float64)
    return out[0], out[1], test_out, CGTraining(cg_map, beads, temperature, positions)


def read_cg_dataset_frames(cfg) -> Tuple[List[Frame], List[Frame], Optional[List[Frame]], CGTraining]:
    """``cg_map: data``: the splits from CG data set files (their map, beads and temperature)."""
    from ..data import split_dataset

    temperature = check_temperature(cfg.temperature)
    try:
        data = load_cg_dataset(cfg.data)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"cg_map 'data' needs a CG data set file (save_cg_dataset): {cfg.data}: {err}") from None
    if data.temperature_K != temperature:
        raise ValueError(f"the CG data set {cfg.data} was sampled at {data.temperature_K:g} K; set "
                         f"temperature {data.temperature_K:g}")
    frames = data.to_frames()
    if cfg.index not in (":", None):
        from ase.io.formats import string2index
        selected = frames[string2index(cfg.index)]
        frames = selected if isinstance(selected, list) else [selected]
    if cfg.valid_data:
        valid = load_cg_dataset(cfg.valid_data).to_frames()
        train = frames
    elif cfg.valid_fraction > 0:
        train, valid = split_dataset(frames, cfg.valid_fraction, seed=cfg.seed,
                                     contiguous=cfg.split == "contiguous")
    else:
        train, valid = frames, []
    test = load_cg_dataset(cfg.test_data).to_frames() if cfg.test_data else None
    positions = np.stack([f.positions for f in train]).astype(np.float64)
    return train, valid, test, CGTraining(data.cg_map, data.beads, temperature, positions)


def load_cg_frames(cfg) -> Tuple[List[Frame], List[Frame], Optional[List[Frame]], CGTraining]:
    """The run's bead frames (train, validation, test) and its :class:`CGTraining`, read as
    ``cfg`` says: CG data sets for ``cg_map: data``, else all-atom data mapped here."""
    if cfg.cg_map == "data":
        return read_cg_dataset_frames(cfg)
    from ..train.data import load_frames

    return prepare_cg_training(cfg, *load_frames(cfg))
