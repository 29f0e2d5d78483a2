"""Errors of a trained potential on a labelled data file (the library side of ``eqgnn-eval``).

>>> from ase_eqgnn.train import evaluate_model
>>> result = evaluate_model("run1/best.pt", "training/data/cu_emt.extxyz")     # doctest: +SKIP
>>> result["forces_mae"]     # meV/Å                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch

from ..checkpoint import load_model
from ..data.readers import read_dataset
from ..dtypes import resolve_dtype
from ..outputs import OutputFiles
from .data import build_samples
from .distributed import resolve_device
from .metrics import Predictions, evaluate

__all__ = ["evaluate_model", "PLOT_SUFFIXES"]

#: Parity plot formats (matplotlib picks the format from the extension).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")



def evaluate_model(model: Union[str, os.PathLike, torch.nn.Module], data: Union[str, os.PathLike],
                   device: str = "cpu", dtype: Optional[str] = None, batch_size: int = 16,
                   plot: Optional[str] = None, **read_options: Any) -> Dict[str, Any]:
    """MAE / RMSE of ``model`` on every frame of ``data``.

    ``model`` is a model file path (``save_model`` format, e.g. ``run/best.pt``) or a Potential;
    ``read_options`` go to :func:`ase_eqgnn.data.read_dataset` (format, energy_unit, energies, ...).
    ``dtype`` "float32"/"float64" casts the model (None keeps the stored precision); ``plot`` writes
    energy/force parity plots to that PNG path (``.pdf``/``.svg`` too), written under a temporary name
    and moved into place at the end: a failed evaluation leaves an existing file as it was.

    Returns ``energy_mae``, ``energy_rmse`` (meV/atom), ``forces_mae``, ``forces_rmse`` (meV/Å),
    ``stress_mae``, ``stress_rmse`` (meV/Å^3, only when the data have stress), ``n_frames`` and
    ``n_atoms`` (total); metrics without reference data are NaN.
    """
    outputs = OutputFiles([data] + ([] if isinstance(model, torch.nn.Module) else [model]))
    if plot:
        outputs.add(plot, "parity plot", PLOT_SUFFIXES)  # checked before the work, not after
    dev = resolve_device(device)
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, map_location=dev)
    model = model.to(dev)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        frames = read_dataset(data, **read_options)
    except (ValueError, OSError):
        raise
    except Exception as err:  # HDF5 and other readers raise their own types for a damaged file
        raise ValueError(f"cannot read {os.fspath(data)!r}: {type(err).__name__}: {err}") from None
    samples = build_samples(frames, model.cutoff)
    preds = Predictions() if plot else None
    sums = evaluate(model, samples, batch_size, device=dev, predictions=preds)
    metrics: Dict[str, Any] = sums.metrics()
    if not any(s.stress is not None for s in samples):
        metrics.pop("stress_mae")
        metrics.pop("stress_rmse")
    metrics["n_frames"] = len(samples)
    metrics["n_atoms"] = int(sum(s.n_atoms for s in samples))
    if plot:
        from .plots import plot_parities

        with outputs:
            plot_parities(preds.arrays(), outputs.start(plot), title=os.path.basename(os.fspath(data)))
            outputs.commit()
    return metrics
