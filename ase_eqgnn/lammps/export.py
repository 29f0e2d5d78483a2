"""Write an :class:`~ase_eqgnn.lammps.EqGNNMLIAP` file for ``pair_style mliap unified``, and the
input lines that go with it.

The file is a pickle (LAMMPS reads it with ``pickle.load``) that names one class,
``ase_eqgnn.lammps.mliap.EqGNNMLIAP``, and holds the model as the bytes of a safe checkpoint. LAMMPS
reads a name ending in ``.pt``/``.pth`` with a bare ``torch.load`` instead, which torch >= 2.6
refuses for anything but tensors, so such names are refused here.

Two sets of input lines make every local energy exact:

* with the halo exchange (default, :mod:`.halo`): LAMMPS's ``python`` command binds the LAMMPS
  instance, so ghost atoms take their owners' features between layers; LAMMPS's default ghost shell
  (cutoff + skin) suffices and ghosts need no neighbour lists (``... FILE 0``);
* without it (``halo=False``): ghosts within layers x cutoff get neighbour lists (``... FILE 1``) and
  are evaluated on every rank, so the communication cutoff must cover layers x cutoff plus LAMMPS's
  neighbour skin (2 Å by default in ``units metal``).

Example
-------
>>> import os, tempfile
>>> from ase_eqgnn.models import build_model
>>> model = build_model("painn", ["Cu"], cutoff=4.0, features=8, layers=2)
>>> path = os.path.join(tempfile.mkdtemp(), "cu.mliap.pkl")
>>> for line in export_mliap(model, path).input_lines: print(line.replace(path, "cu.mliap.pkl"))
pair_style mliap unified cu.mliap.pkl 0
pair_coeff * * Cu
python eqgnn_attach input 1 SELF format p here "from ase_eqgnn.lammps.halo import attach as eqgnn_attach"
python eqgnn_attach invoke
>>> export_mliap(model, path, halo=False).input_lines[::2]
['pair_style mliap unified ...cu.mliap.pkl 1', 'comm_modify cutoff 10']
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List

from ..checkpoint.files import write_atomically
from .halo import INPUT_LINES as HALO_LINES
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


def input_lines(unified: EqGNNMLIAP, path, skin: float = DEFAULT_SKIN,
                halo: bool = True) -> List[str]:
    """The lines a LAMMPS input needs for this file (types in the order of the elements), with the
    halo exchange or (``halo=False``) with ghosts evaluated on every rank."""
    elements = "pair_coeff * * " + " ".join(unified.element_types)
    if halo:
        return [f"pair_style mliap unified {os.fspath(path)} 0", elements, *HALO_LINES]
    return [f"pair_style mliap unified {os.fspath(path)} 1", elements,
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


def export_mliap(model: ModelLike, path=None, dtype: str = "float64",
                 skin: float = DEFAULT_SKIN, halo: bool = True) -> Export:
    """Write ``model`` (checkpoint path, bundled name or Potential) as an ML-IAP unified file.

    ``path`` defaults to ``<name>.mliap.pkl``; ``dtype`` is the precision LAMMPS will evaluate in;
    ``skin`` (Å) the neighbour skin of the input, for the communication cutoff printed without the
    halo exchange; ``halo``: which input lines (see the module docstring).
    Everything is checked before the file is written; an existing file is replaced only by a
    complete new one.
    """
    path = check_output_name(default_output_name(model) if path is None else path)
    unified = EqGNNMLIAP(model, dtype=dtype, device="cpu")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"directory {path.resolve().parent} does not exist")
    data = pickle.dumps(unified, protocol=PICKLE_PROTOCOL)
    write_atomically(path, lambda f: f.write(data))
    return Export(path=path, unified=unified, input_lines=input_lines(unified, path, skin, halo))


__all__ = ["Export", "export_mliap", "input_lines", "communication_cutoff", "check_output_name",
           "default_output_name", "DEFAULT_SKIN"]
