"""Safe model files: a JSON config plus tensors, written atomically, loaded without pickle code.

File layout (a ``torch.save`` dict, read back with ``torch.load(weights_only=True)``)::

    {"format": "ase_eqgnn", "format_version": 1, "package_version": "0.1.0",
     "config_json": '{"name": ..., "species": [...], "cutoff": ..., "hparams": {...},
                      "units": {"energy": "eV", "length": "Å"}, "metadata": {...}}',
     "state_dict": {name: tensor}}

Writing goes to a temporary file in the same directory, is fsync'ed, then ``os.replace``-d over the
target, so a crash never leaves a half-written model under the final name. Reading checks every
field and raises :class:`CheckpointError` (a ``ValueError``) naming the file and what to do.

Example
-------
>>> import os, tempfile
>>> from ase_eqgnn.models import build_model
>>> model = build_model("egnn", species=["Cu"], cutoff=4.0, features=16, layers=1)
>>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
>>> save_model(model, path, metadata={"trained_on": "nothing"})
>>> load_model(path).config == model.config
True
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional, Union

import torch

FORMAT = "ase_eqgnn"
FORMAT_VERSION = 1
UNITS = {"energy": "eV", "length": "Å"}

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A model file that is missing pieces, corrupt, foreign or from a newer version."""


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("ase_eqgnn")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def save_model(model: torch.nn.Module, path: PathLike,
               metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (a :class:`~ase_eqgnn.models.Potential`) to ``path`` atomically.

    ``metadata`` is an optional JSON-able dict (training data, metrics, ...) stored in the config.
    Tensors are saved on the CPU in the model's dtype.
    """
    config = dict(model.config)
    config["units"] = dict(UNITS)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        config["metadata"] = metadata
    try:
        config_json = json.dumps(config, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model config/metadata is not JSON-serialisable: {err}") from None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "config_json": config_json,
        "state_dict": state,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and ``os.replace``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary readable file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint_dict(path: PathLike, map_location: Union[str, torch.device] = "cpu"
                         ) -> Dict[str, Any]:
    """The validated raw content of a model file, with ``"config"`` (the parsed JSON) added.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for anything that
    is not a readable ase_eqgnn model file of a supported version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read model file {path!r}: it is truncated, corrupt or not a torch file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Re-save or re-download the model.") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        kind = type(raw).__name__ if not isinstance(raw, dict) else \
            f"dict with keys {sorted(map(str, raw))[:6]}"
        raise CheckpointError(
            f"{path!r} is not an ase_eqgnn model file (found a {kind}). Build the model with "
            "ase_eqgnn.build_model and write it with ase_eqgnn.save_model; files from other packages "
            "are not read.")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"model file {path!r} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"model file {path!r} has format_version {version}, newer than this ase_eqgnn "
            f"(reads up to {FORMAT_VERSION}; file written by ase_eqgnn "
            f"{raw.get('package_version', '?')}). Upgrade ase_eqgnn to load it.")
    config_json = raw.get("config_json")
    if not isinstance(config_json, str):
        raise CheckpointError(f"model file {path!r} has no config_json string; the file is damaged")
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"model file {path!r} has an unreadable config ({err}); the file is "
                              "damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"model file {path!r}: config is not a JSON object; the file is damaged")
    missing = [k for k in ("name", "species", "cutoff", "hparams") if k not in config]
    if missing or not isinstance(config["hparams"], dict):
        raise CheckpointError(f"model file {path!r}: config lacks {missing or ['hparams (a dict)']}; "
                              "the file is damaged")
    units = config.get("units", UNITS)
    if units != UNITS:
        raise CheckpointError(f"model file {path!r} uses units {units}, expected {UNITS}")
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"model file {path!r} has no valid state_dict; the file is damaged")
    out = dict(raw)
    out["config"] = config
    return out


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in ``path`` (see :func:`save_model`), in eval mode.

    The model gets the dtype of the stored tensors (float32 or float64) and lives on
    ``map_location``.
    """
    from .models import build_model

    ckpt = load_checkpoint_dict(path, map_location=map_location)
    config = ckpt["config"]
    try:
        model = build_model(config["name"], config["species"], config["cutoff"],
                            hparams=config["hparams"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"model file {path!r} describes a model this ase_eqgnn cannot build: "
                              f"{err}") from None
    state = ckpt["state_dict"]
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"model file {path!r} does not match its config "
                              f"({str(err).splitlines()[0]}); the file is damaged") from None
    return model.to(map_location).eval()


__all__ = ["CheckpointError", "save_model", "load_model", "load_checkpoint_dict",
           "atomic_torch_save", "FORMAT", "FORMAT_VERSION"]
