"""PNG plots of a run: the learning curve from ``log.csv`` and energy / force parity plots.

matplotlib's non-interactive Agg backend is selected inside each function (never at import), so
importing this module changes nothing for a user's own plotting. Every plot is written through a
temporary file and moved into place, so a failure never leaves a truncated image under the name.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .run_dir import atomic_output

__all__ = ["read_log", "plot_learning_curve", "plot_parity", "plot_parities"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int = 110) -> None:
    """``fig.savefig`` atomically, then close ``fig``; the format follows the extension of ``path``
    (PNG without one)."""
    import matplotlib.pyplot as plt

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with atomic_output(os.fspath(path), "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)


#: The validation errors a potential's learning curve shows: (log.csv column, legend label).
POTENTIAL_METRICS = (("energy_mae", "energy MAE (meV/atom)"), ("forces_mae", "forces MAE (meV/Å)"),
                     ("stress_mae", "stress MAE (meV/Å³)"))


def read_log(path: str) -> Dict[str, np.ndarray]:
    """Columns of a ``log.csv`` as float arrays (empty cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the log has no rows")
    def num(x: str) -> float:
        try:
            return float(x)
        except (TypeError, ValueError):
            return math.nan
    return {k: np.array([num(r[k]) for r in rows]) for k in rows[0]}


def plot_learning_curve(log_csv: str, path: str, losses: Sequence[str] = ("train_loss", "valid_loss"),
                        metrics: Sequence[Tuple[str, str]] = POTENTIAL_METRICS,
                        metrics_label: str = "validation MAE", metrics_log: bool = True) -> str:
    """Losses (log scale) and validation metrics against epoch, from ``log_csv``; returns ``path``.

    ``losses`` are log.csv columns for the left panel, ``metrics`` (column, legend label) pairs for
    the right one (``metrics_label`` on its axis, log scale unless ``metrics_log`` is False).
    """
    plt = _pyplot()
    log = read_log(log_csv)
    epoch = log["epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for key in losses:
        if key in log and np.isfinite(log[key]).any():
            ax.plot(epoch, log[key], marker=".", label=key.replace("_", " "))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax = axes[1]
    for key, label in metrics:
        if key in log and np.isfinite(log[key]).any():
            ax.plot(epoch, log[key], marker=".", label=label)
    if ax.lines:
        if metrics_log:
            ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel(metrics_label)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_parity(ref: Sequence[float], pred: Sequence[float], path: str, quantity: str, unit: str,
                title: Optional[str] = None) -> str:
    """One parity plot (prediction vs reference) with MAE / RMSE in the legend; returns ``path``.

    ``ref`` and ``pred`` are in ``unit`` (e.g. eV/atom, eV/Å); the errors are shown in milli-``unit``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    _parity_axes(ax, np.asarray(ref), np.asarray(pred), quantity, unit)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_parities(arrays: Dict[str, np.ndarray], path: str, title: Optional[str] = None) -> str:
    """Energy (eV/atom) and force (eV/Å) parity side by side from :meth:`Predictions.arrays`."""
    plt = _pyplot()
    panels = [(q, u) for q, u in (("energy", "eV/atom"), ("forces", "eV/Å")) if arrays[f"{q}_ref"].size]
    if not panels:
        raise ValueError("nothing to plot: no energies or forces")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (q, u) in zip(axes[0], panels):
        _parity_axes(ax, arrays[f"{q}_ref"], arrays[f"{q}_pred"], q, u)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def _parity_axes(ax, ref: np.ndarray, pred: np.ndarray, quantity: str, unit: str) -> None:
    if ref.shape != pred.shape or ref.size == 0:
        raise ValueError(f"{quantity}: reference and prediction must be non-empty and of equal shape")
    err = pred - ref
    mae, rmse = 1e3 * np.abs(err).mean(), 1e3 * np.sqrt((err ** 2).mean())
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
    ax.scatter(ref, pred, s=4, alpha=0.5, label=f"MAE {mae:.3g} m{unit}\nRMSE {rmse:.3g} m{unit}")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.legend(loc="upper left", fontsize=8)
