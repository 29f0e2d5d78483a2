"""Model registry: ``build_model(name, species, cutoff, **hparams)`` -> :class:`Potential`.

==========  ===========================================  ===========================================
name        family                                       hyper-parameters (defaults)
==========  ===========================================  ===========================================
``egnn``    EGNN, Satorras et al. 2021 (:mod:`.egnn`)    features 128, layers 3, n_radial 8,
                                                         envelope_p 6, avg_num_neighbors 16,
                                                         coord_update False
``painn``   PaiNN, Schütt et al. 2021 (:mod:`.painn`)    features 128, layers 3, n_radial 20,
                                                         envelope_p 6, avg_num_neighbors 16
``tp``      NequIP-style e3nn tensor products (:mod:`.tp`) features 32, l_max 2, layers 4, n_radial 8,
                                                         radial_hidden 64, radial_layers 2,
                                                         envelope_p 6, avg_num_neighbors 16
==========  ===========================================  ===========================================

Every family also takes ``head_hidden`` (width of the per-atom energy head; default features // 2).

Reading order: a family's file (the physics, written against the neighbourhood interface of
:mod:`.neighborhood`, whose plain edge list is the reference), then :mod:`.blocks` (basis, envelope,
embedding), :mod:`.potential` (energy head, forces, stress); the speed-ups live apart, in
:mod:`.layouts` (padded neighbour layouts) and :mod:`.tp_fused` (the fused tensor product).
The resolved hyper-parameters (defaults filled in) are stored in ``model.config`` so a checkpoint
rebuilds exactly the same network even if defaults change later.

Example
-------
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", species=["Cu"], cutoff=5.0, features=32, layers=2)
>>> model.config["name"], model.species, model.cutoff
('painn', [29], 5.0)
>>> rebuilt = build_model(**model.config)
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

from . import egnn, painn, tp
from .blocks import check_positive_int, normalize_species
from .potential import Potential, count_parameters

_FAMILIES = {
    "egnn": egnn,
    "painn": painn,
    "tp": tp,
}

MODEL_NAMES = tuple(sorted(_FAMILIES))


def default_hparams(name: str) -> Dict[str, Any]:
    """The hyper-parameters of family ``name`` with their defaults (``head_hidden`` unresolved)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return {**_FAMILIES[name].DEFAULTS, "head_hidden": None}


def build_model(name: str, species: Sequence, cutoff: float, hparams: Dict[str, Any] = None,
                **kwargs) -> Potential:
    """A randomly initialised potential of family ``name``.

    Parameters
    ----------
    name : "egnn", "painn" or "tp".
    species : atomic numbers or element symbols the model will know (stored sorted).
    cutoff : neighbour cutoff in Å.
    hparams / **kwargs : hyper-parameters of the family (see the module table); a dict and keywords
        may be combined (keywords win). Unknown names raise ``ValueError`` listing the valid ones.
    """
    defaults = default_hparams(name)
    given = {**(hparams or {}), **kwargs}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {', '.join(unknown)} for model {name!r}; valid: "
                         f"{', '.join(sorted(defaults))}")
    species = normalize_species(species)
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number of Å, got {cutoff!r}") from None
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a finite positive number of Å, got {cutoff}")
    resolved = {**defaults, **given}
    if resolved["head_hidden"] is None:
        resolved["head_hidden"] = max(1, int(resolved["features"]) // 2)
    head_hidden = check_positive_int("head_hidden", resolved["head_hidden"])
    representation = _FAMILIES[name].build(len(species), cutoff, resolved)
    # JSON-able copy: plain Python numbers.
    clean = {k: (v if isinstance(v, (bool, str)) or v is None else
                 (int(v) if isinstance(v, int) or hasattr(v, "__index__") else float(v)))
             for k, v in resolved.items()}
    return Potential(representation, species, cutoff, name, clean, head_hidden)


__all__ = ["build_model", "default_hparams", "MODEL_NAMES", "Potential", "count_parameters"]
