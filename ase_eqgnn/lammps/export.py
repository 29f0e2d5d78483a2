"""Write an :class:`~ase_eqgnn.lammps.EqGNNMLIAP` file for ``pair_style mliap unified``, and the
input lines that go with it.

The file is a pickle (LAMMPS reads it with ``pickle.load``) that names one class,
``ase_eqgnn.lammps.mliap.EqGNNMLIAP``, and holds the model as the bytes of a safe checkpoint. LAMMPS
reads a name ending in ``.pt``/``.pth`` with a bare ``torch.load`` instead, which torch >= 2.6
refuses for anything but tensors, so such names are refused here. The communication cutoff must
cover layers x cutoff (the model's receptive field) plus LAMMPS's neighbour skin (2 Å by default in
``units metal``): ghost atoms that far out get complete neighbour lists, so every local energy is
exact.

Example
-------
>>> import os, tempfile
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", ["Cu"], cutoff=4.0, features=8, layers=2)
>>> path = os.path.join(tempfile.mkdtemp(), "cu.mliap.pkl")
>>> for line in export_mliap(model, path).input_lines: print(line.replace(path, "cu.mliap.pkl"))
pair_style mliap unified cu.mliap.pkl 1
pair_coeff * * Cu
comm_modify cutoff 10
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .mliap import EqGNNMLIAP
from .model import ModelLike

#: LAMMPS's default neighbour skin in ``units metal`` (Å).
DEFAULT_SKIN = 2.0
#: Pickle protocol of the files (Python >= 3.4 reads it).
PICKLE_PROTOCOL = 4
_REFUSED_SUFFIXES = (".pt", ".pth")


@dataclass
class Export:
    """What :func:`export_mliap` wrote: the file, its object and the LAMMPS input lines."""

    path: Path
    unified: EqGNNMLIAP
    input_lines: List[str]


def _number(x: float) -> str:
    return f"{x:.6g}"


def communication_cutoff(unified: EqGNNMLIAP, skin: float = DEFAULT_SKIN) -> float:
    """layers x cutoff + skin (Å): the ``comm_modify cutoff`` for ``pair_style mliap unified``."""
    return unified.receptive_field + float(skin)


def input_lines(unified: EqGNNMLIAP, path, skin: float = DEFAULT_SKIN) -> List[str]:
    """The three lines a LAMMPS input needs for this file (types in the order of the elements)."""
    return [f"pair_style mliap unified {os.fspath(path)} 1",
            "pair_coeff * * " + " ".join(unified.element_types),
            f"comm_modify cutoff {_number(communication_cutoff(unified, skin))}"]


def check_output_name(path) -> Path:
    """The path as given, unless its name is one LAMMPS would read with ``torch.load``."""
    path = Path(path)
    if path.suffix.lower() in _REFUSED_SUFFIXES:
        raise ValueError(f"{path.name}: LAMMPS loads files named *.pt/*.pth with torch.load, which "
                         "torch >= 2.6 refuses for an ML-IAP object; name it *.mliap.pkl")
    if path.name == "" or path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name such as model.mliap.pkl")
    return path


def default_output_name(model: ModelLike) -> Path:
    """``<name>.mliap.pkl`` in the current directory for a checkpoint path or a bundled name."""
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError("give an output path when exporting a model object")
    name = Path(os.fspath(model)).name
    for suffix in (".pt", ".pth"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return Path(f"{name}.mliap.pkl")


def write_atomically(data: bytes, path: Path) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    directory = path.resolve().parent
    if not directory.is_dir():
        raise ValueError(f"directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def export_mliap(model: ModelLike, path=None, dtype: str = "float64",
                 skin: float = DEFAULT_SKIN) -> Export:
    """Write ``model`` (checkpoint path, bundled name or Potential) as an ML-IAP unified file.

    ``path`` defaults to ``<name>.mliap.pkl``; ``dtype`` is the precision LAMMPS will evaluate in;
    ``skin`` (Å) the neighbour skin of the input, for the communication cutoff printed.
    Everything is checked before the file is written; an existing file is replaced only by a
    complete new one.
    """
    path = check_output_name(default_output_name(model) if path is None else path)
    unified = EqGNNMLIAP(model, dtype=dtype, device="cpu")
    write_atomically(pickle.dumps(unified, protocol=PICKLE_PROTOCOL), path)
    return Export(path=path, unified=unified, input_lines=input_lines(unified, path, skin))


__all__ = ["Export", "export_mliap", "input_lines", "communication_cutoff", "check_output_name",
           "default_output_name", "DEFAULT_SKIN"]
