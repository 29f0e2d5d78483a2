"""ase_eqgnn: equivariant graph-neural-network interatomic potentials behind ASE's Calculator."""

__version__ = "0.1.0"

from .graph import AtomicGraph  # noqa: E402
from .neighbors import VerletList, batched_neighbor_list, neighbor_list  # noqa: E402

__all__ = ["AtomicGraph", "VerletList", "batched_neighbor_list", "neighbor_list", "__version__"]
