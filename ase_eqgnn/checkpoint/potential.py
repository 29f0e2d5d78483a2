"""Potential files: :func:`save_model` / :func:`load_model` (the layout is in the package docstring).

Loading treats the file as untrusted input and checks, before anything is allocated, the
hyper-parameters against :data:`HPARAM_BOUNDS`, the cutoff against :data:`CUTOFF_RANGE_A`, the
species and the training-domain record (:func:`check_domain`); then the stored tensor names and
shapes against those of the network the config describes, built with its allocations on the meta
device (at most :data:`MAX_PARAMETERS` elements); and that every floating-point tensor is finite.

Example
-------
>>> import os, tempfile
>>> from ase_eqgnn.models import build_model
>>> model = build_model("egnn", species=["Cu"], cutoff=4.0, features=16, layers=1)
>>> model.domain = {"Cu-Cu": 2.2}
>>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
>>> save_model(model, path, metadata={"trained_on": "nothing"})
>>> loaded = load_model(path)
>>> loaded.config == model.config, loaded.domain
(True, {'Cu-Cu': 2.2})
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Union

import torch

from .files import (CheckpointError, FileKind, PathLike, check_finite, check_state_shapes,
                    probe_state_shapes, read_checkpoint, write_checkpoint)

FORMAT = "ase_eqgnn"
#: 1: config + tensors; 2: adds the SHA-256 digest and the training-domain record ("domain");
#: 3: adds the coarse-grained section ("cg": beads, map, priors; :mod:`ase_eqgnn.cg.potential`).
#: Files without a coarse-grained section are still written as 2, which older versions read.
FORMAT_VERSION = 3
PLAIN_VERSION = 2
POTENTIAL_FILE = FileKind(format=FORMAT, version_key="format_version", version=FORMAT_VERSION,
                          sealed_since=2, what="model file",
                          writer="ase_eqgnn.save_model (or eqgnn-train)")
UNITS = {"energy": "eV", "length": "Å"}

#: Inclusive bounds of the hyper-parameters a model file may ask for: far beyond any model this
#: package trains (the bundled ones use features 32-64, 2-3 layers), far below sizes that would
#: exhaust memory on building. Integers unless the bound is a float.
HPARAM_BOUNDS = {
    "features": (1, 1024), "layers": (1, 32), "n_radial": (1, 128), "l_max": (0, 6),
    "radial_hidden": (1, 1024), "radial_layers": (0, 8), "head_hidden": (1, 1024),
    "envelope_p": (2, 64), "avg_num_neighbors": (1e-3, 1e4),
    # tp's body order (models/body_order.py): its symmetric basis grows as d^ν / ν! with the
    # density's size d = (sh_l_max + 1)^2; None for sh_l_max means l_max
    "correlation": (1, 4), "sh_l_max": (0, 3),
}
#: Neighbour cutoffs a model file may have, Å: from below any bond length to where neighbour
#: lists of condensed matter hold thousands of atoms per atom.
CUTOFF_RANGE_A = (0.5, 20.0)
#: Largest number of tensor elements (parameters and persistent buffers) of a model file's network.
MAX_PARAMETERS = 50_000_000


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("ase_eqgnn")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


# -- checks of the config (before anything is built) ---------------------------------------------
def _is_finite_number(value: Any) -> bool:
    # ints are finite however large (math.isfinite would overflow on 10**400)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (isinstance(value, int) or math.isfinite(value))


def check_hparams(hparams: Dict[str, Any]) -> None:
    """ValueError naming the first hyper-parameter outside :data:`HPARAM_BOUNDS` or of a wrong type
    (names the bounds do not know are left to the model builder, which rejects unknown ones)."""
    for name, value in hparams.items():
        if name not in HPARAM_BOUNDS:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"hyper-parameter {name} is {value}")
            continue
        low, high = HPARAM_BOUNDS[name]
        if name in ("head_hidden", "sh_l_max") and value is None:
            continue
        if isinstance(low, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            kind = "an integer"
        else:
            ok = _is_finite_number(value)
            kind = "a number"
        if not ok or not low <= value <= high:
            raise ValueError(f"hyper-parameter {name} must be {kind} in [{low}, {high}], got {value!r}")


def highest_l(hparams: Dict[str, Any]) -> Optional[int]:
    """The highest angular order of a (checked) config's network, for the shape probe's e3nn
    constants: l_max, or tp's sh_l_max where larger; None for families without one."""
    orders = [hparams.get(key) for key in ("l_max", "sh_l_max")]
    orders = [l for l in orders if isinstance(l, int) and not isinstance(l, bool)]
    return max(orders) if orders else None


def check_model_size(name: str, species, cutoff: float, hparams: Dict[str, Any]) -> None:
    """ValueError when a model of these settings would have more weights than a model file may
    hold (:data:`MAX_PARAMETERS`), counted on torch's "meta" device, which allocates nothing: the
    trainer asks before it builds the model, as loading does before it reads the tensors."""
    from ..models import build_model

    expected = probe_state_shapes(lambda: build_model(name, species, cutoff, hparams=dict(hparams)),
                                  l_max=highest_l(hparams))
    n = 0 if expected is None else sum(shape.numel() for shape, _ in expected.values())
    if n > MAX_PARAMETERS:
        raise ValueError(f"hparams {hparams} give a {name} model of {n:,} weights, more than "
                         f"{MAX_PARAMETERS:,}: choose fewer features or layers")


def check_cutoff(cutoff: Any) -> float:
    """The cutoff as a float; ValueError unless it is finite and within :data:`CUTOFF_RANGE_A`."""
    low, high = CUTOFF_RANGE_A
    if not _is_finite_number(cutoff) or not low <= cutoff <= high:
        raise ValueError(f"cutoff must be a finite number of Å in [{low}, {high}], got {cutoff!r}")
    return float(cutoff)


def check_domain(domain: Any, species, cutoff: float) -> Optional[Dict[str, float]]:
    """A training-domain record (see :mod:`ase_eqgnn.domain`) as a clean dict, or None.

    Keys are element pairs ``"A-B"`` of the model's ``species`` (atomic numbers) in the order of
    :func:`ase_eqgnn.domain.pair_key`; values finite distances in (0, cutoff] Å.
    """
    from ase.data import chemical_symbols

    from ..domain import pair_key

    if domain is None:
        return None
    if not isinstance(domain, dict):
        raise ValueError(f"the training-domain record must be a dict of element pairs, got "
                         f"{type(domain).__name__}")
    known = {pair_key(a, b) for a in species for b in species}
    clean = {}
    for key, value in domain.items():
        if key not in known:
            names = [chemical_symbols[z] for z in species]
            raise ValueError(f"training-domain record has the entry {key!r}, not a pair of the "
                             f"model's elements {names} written as 'A-B' (lighter element first)")
        if not _is_finite_number(value) or not 0 < value <= cutoff * (1 + 1e-9):
            raise ValueError(f"training-domain record: the shortest {key} distance must be a number "
                             f"in (0, cutoff={cutoff}] Å, got {value!r}")
        clean[key] = float(value)
    return clean


# -- potentials -----------------------------------------------------------------------------------
def save_model(model: torch.nn.Module, path: PathLike,
               metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (a :class:`~ase_eqgnn.models.Potential`) to ``path`` atomically.

    ``model.domain`` (the training-domain record or None) is stored in the config; ``metadata`` is
    an optional JSON-able dict (training data, metrics, ...). Tensors are saved on the CPU in the
    model's dtype.
    """
    config = dict(model.config)
    config["domain"] = check_domain(getattr(model, "domain", None), config["species"],
                                    float(config["cutoff"]))
    config["units"] = dict(UNITS)
    if "cg" in config:
        from ..cg.potential import check_cg_record
        check_cg_record(config["cg"], config["species"])
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        config["metadata"] = metadata
    try:
        config_json = json.dumps(config, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model config/metadata is not JSON-serialisable: {err}") from None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    write_checkpoint({
        "format": FORMAT,
        "format_version": FORMAT_VERSION if "cg" in config else PLAIN_VERSION,
        "package_version": _package_version(),
        "config_json": config_json,
        "state_dict": state,
    }, path)


def load_checkpoint_dict(path: PathLike, map_location: Union[str, torch.device] = "cpu"
                         ) -> Dict[str, Any]:
    """The verified content of a potential file, with ``"config"`` (the parsed, checked JSON) added.

    Checks the digest, the fields, the config (:func:`check_hparams`, :func:`check_cutoff`, species,
    :func:`check_domain`) and that every floating-point tensor is finite. Raises
    ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for anything else wrong.
    """
    from ..models.blocks import normalize_species

    path = os.fspath(path)
    legacy = "and no training-domain record (so structures outside it are not flagged)"
    raw = read_checkpoint(path, POTENTIAL_FILE, legacy_note=legacy)
    version = raw["format_version"]
    config_json = raw.get("config_json")
    if not isinstance(config_json, str):
        raise CheckpointError(f"model file {path!r} has no config_json string; the file is damaged")
    try:
        config = json.loads(config_json)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"model file {path!r} has an unreadable config ({err}); the file is "
                              "damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"model file {path!r}: config is not a JSON object; the file is damaged")
    required = ("name", "species", "cutoff", "hparams") + (("domain",) if version >= 2 else ())
    missing = [k for k in required if k not in config]
    if missing or not isinstance(config["hparams"], dict):
        raise CheckpointError(f"model file {path!r}: config lacks {missing or ['hparams (a dict)']}; "
                              "the file is damaged")
    units = config.get("units", UNITS)
    if units != UNITS:
        raise CheckpointError(f"model file {path!r} uses units {units}, expected {UNITS}")
    try:
        config["cutoff"] = check_cutoff(config["cutoff"])
        species = normalize_species(config["species"])
        check_hparams(config["hparams"])
        config["domain"] = check_domain(config.get("domain"), species, config["cutoff"])
        if "cg" in config:
            if version < 3:
                raise ValueError(f"a coarse-grained section in a format_version {version} file")
            from ..cg.potential import check_cg_record
            check_cg_record(config["cg"], species)
    except ValueError as err:
        raise CheckpointError(f"model file {path!r} has an invalid config: {err}") from None
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"model file {path!r} has no valid state_dict; the file is damaged")
    check_finite(state, f"model file {path!r}")
    if torch.device(map_location).type != "cpu":
        state = {k: v.to(map_location) for k, v in state.items()}
    out = dict(raw)
    out["state_dict"] = state
    out["config"] = config
    return out


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in ``path`` (see :func:`save_model`), in eval mode.

    The model gets the dtype of the stored tensors (float32 or float64), its training-domain record
    as ``model.domain``, and lives on ``map_location``. Loading leaves torch's random state alone.
    """
    from ..models import build_model

    path = os.fspath(path)
    ckpt = load_checkpoint_dict(path)
    config = ckpt["config"]
    state = ckpt["state_dict"]
    where = f"model file {path!r}"
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) > 1 or not floats <= {torch.float32, torch.float64}:
        raise CheckpointError(f"{where} holds tensors of dtypes {sorted(map(str, floats))}; a model "
                              "is all float32 or all float64")

    def build():
        return build_model(config["name"], config["species"], config["cutoff"],
                           hparams=config["hparams"])

    try:
        expected = probe_state_shapes(build, l_max=highest_l(config["hparams"]))
        if expected is not None:
            check_state_shapes(expected, state, where, MAX_PARAMETERS)
        with torch.random.fork_rng(devices=[]):  # random initial weights, overwritten below
            model = build()
    except (ValueError, TypeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{where} describes a model this ase_eqgnn cannot build: {err}") from None
    if floats:
        model = model.to(floats.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{where} does not match its config "
                              f"({str(err).splitlines()[0]}); the file is damaged") from None
    model.domain = config["domain"]
    if "cg" in config:  # checked in load_checkpoint_dict
        from ..cg.potential import CGPotential, check_cg_record
        cg = check_cg_record(config["cg"], config["species"])
        model = CGPotential(model, cg["prior"], cg["beads"], cg["map"])
    return model.to(map_location).eval()


__all__ = ["save_model", "load_model", "load_checkpoint_dict", "check_hparams", "check_cutoff",
           "check_model_size",
           "check_domain", "FORMAT", "FORMAT_VERSION", "UNITS", "HPARAM_BOUNDS", "CUTOFF_RANGE_A",
           "MAX_PARAMETERS", "highest_l"]
