"""The training state in ``last.pt``: everything needed to continue a run exactly.

``last.pt`` is a ``torch.save`` dict of tensors and plain Python values only (read back with
``torch.load(weights_only=True)``): model, optimizer, scheduler and EMA state dicts, the epoch
counter, early-stopping state, wall time so far, the per-epoch history (the rows of ``log.csv``),
the resolved config, and the random-number states of torch (CPU and CUDA), NumPy and Python stored
as tensors and lists. It is written atomically (temporary file, fsync, ``os.replace``), so a kill at
any moment leaves either the previous or the new complete file.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from ..checkpoint import atomic_torch_save

__all__ = ["TrainStateError", "TRAIN_STATE_FORMAT", "rng_state", "set_rng_state", "save_train_state",
           "load_train_state", "config_differences"]

TRAIN_STATE_FORMAT = "ase_eqgnn-train-state"
TRAIN_STATE_VERSION = 1


class TrainStateError(ValueError):
    """``last.pt`` cannot be read or does not belong to this run."""


def rng_state() -> Dict[str, Any]:
    """Random states of torch (CPU, every CUDA device), NumPy's global generator and ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": [int(x) for x in py_state],
                   "gauss_next": None if py_gauss is None else float(py_gauss)},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned.

    Generator states are CPU byte tensors whatever device the checkpoint was mapped to (resuming on
    a GPU loads ``last.pt`` with ``map_location="cuda"``), so they are brought back to the CPU here.
    """
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_train_state(state: Dict[str, Any], path: str) -> None:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    atomic_torch_save({"format": TRAIN_STATE_FORMAT, "format_version": TRAIN_STATE_VERSION, **state}, path)


def load_train_state(path: str, map_location="cpu") -> Dict[str, Any]:
    """Read ``last.pt``; :class:`TrainStateError` (a ValueError) says what is wrong and what to do."""
    path = os.fspath(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise TrainStateError(
            f"cannot read the training checkpoint {path!r}: it is truncated or corrupt "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Move it away to "
            "start this run from scratch, or use another --out directory.") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise TrainStateError(f"{path!r} is not an ase_eqgnn training checkpoint (last.pt); move it away "
                              "or use another --out directory")
    if state.get("format_version", 0) > TRAIN_STATE_VERSION:
        raise TrainStateError(f"{path!r} was written by a newer ase_eqgnn (format_version "
                              f"{state.get('format_version')}); upgrade to resume it")
    missing = [k for k in ("model", "optimizer", "scheduler", "ema", "epoch", "config", "rng", "history")
               if k not in state]
    if missing:
        raise TrainStateError(f"training checkpoint {path!r} lacks {missing}; the file is damaged")
    return state


def config_differences(old: Dict[str, Any], new: Dict[str, Any], mutable: Iterable[str]) -> List[str]:
    """Keys whose values differ between two config dicts, ignoring ``mutable`` ones."""
    mutable = set(mutable)
    keys = sorted((set(old) | set(new)) - mutable)
    return [k for k in keys if old.get(k) != new.get(k)]
