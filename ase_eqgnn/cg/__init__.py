"""Coarse-grain back-mapping (after CGVAE, Wang et al., ICML 2022).

- :mod:`.maps`: :class:`CGMap` and map builders (residue, alpha carbon, named atoms, anchors,
  the alanine-dipeptide 5-bead map);
- :mod:`.model`: :class:`BackmapVAE` (equivariant encoder, conditional prior, chirality-aware
  equivariant decoder);
- :mod:`.losses`, :mod:`.metrics` (CGVAE's definitions), :mod:`.train`, :mod:`.backmap`
  (:class:`BackMapper`: CG frames -> all-atom frames; readers and writers);
- the CG force field: :mod:`.forcematch` (mapped forces), :mod:`.priors`, :mod:`.potential`
  (:class:`CGPotential`), :mod:`.beads` (:func:`beads_to_atoms`), :mod:`.training`
  (``eqgnn-train --cg-map``), :mod:`.loop` (CG MD, back-mapped ensemble), :mod:`.ramachandran`.
"""

from .backmap import BackMapper, evaluate_model, load_checkpoint, read_cg, write_all_atom
from .maps import (CGMap, ala2_five_bead_map, anchor_map, build_map, ca_map, named_atoms_map,
                   residue_map)
from .model import BackmapConfig, BackmapVAE
from .beads import BeadSet, beads_to_atoms
from .potential import CGPotential
from .priors import CGPrior

__all__ = ["CGMap", "ala2_five_bead_map", "anchor_map", "build_map", "ca_map", "named_atoms_map",
           "residue_map", "BackmapConfig", "BackmapVAE", "BackMapper", "evaluate_model",
           "load_checkpoint", "read_cg", "write_all_atom", "BeadSet", "beads_to_atoms", "CGPotential",
           "CGPrior"]
