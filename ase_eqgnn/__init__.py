"""ase_eqgnn: equivariant graph-neural-network interatomic potentials behind ASE's Calculator.

>>> from ase.build import bulk
>>> from ase_eqgnn import EqGNNCalculator, build_model
>>> atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
>>> atoms.calc = EqGNNCalculator(build_model("painn", species=["Cu"], cutoff=4.0))
>>> atoms.get_forces().shape
(4, 3)
"""

__version__ = "0.1.0"

from .calculator import EqGNNCalculator  # noqa: E402
from .checkpoint import load_model, save_model  # noqa: E402
from .graph import AtomicGraph  # noqa: E402
from .models import build_model  # noqa: E402
from .neighbors import VerletList, batched_neighbor_list, neighbor_list  # noqa: E402

__all__ = ["EqGNNCalculator", "build_model", "save_model", "load_model", "AtomicGraph",
           "VerletList", "batched_neighbor_list", "neighbor_list", "__version__"]
