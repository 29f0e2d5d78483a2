"""The lattice frame of a cell: lattice vectors along periodic directions, an orthonormal completion
along the others.

Fractional coordinates in this frame wrap into [0, 1) along periodic directions and measure plain
distance along the others; the cell list bins in it.
"""

from __future__ import annotations

import numpy as np

def lattice_frame(cell: np.ndarray, pbc: np.ndarray, graph: int = 0) -> np.ndarray:
    """Rows: lattice vectors along periodic directions, an orthonormal completion elsewhere.

    Raises ``ValueError`` when the periodic lattice vectors are (nearly) linearly dependent.
    """
    periodic = [d for d in range(3) if pbc[d]]
    vecs = cell[periodic]
    if len(periodic):
        # Gram determinant = squared volume of the periodic sub-lattice.
        gram = np.linalg.det(vecs @ vecs.T)
        scale = np.prod(np.sum(vecs**2, axis=1))
        if not gram > 1e-20 * max(scale, 1e-300) or scale == 0.0:
            names = "".join("xyz"[d] for d in periodic)
            raise ValueError(
                f"cell of structure {graph} is singular along its periodic directions ({names}): "
                f"lattice vectors {vecs.tolist()} span no volume; give a proper cell or set pbc=False "
                "along the degenerate direction")
    frame = np.zeros((3, 3))
    frame[periodic] = vecs
    free = [d for d in range(3) if not pbc[d]]
    if len(free) == 3:
        frame = np.eye(3)
    elif len(free) == 2:
        a = vecs[0] / np.linalg.norm(vecs[0])
        helper = np.eye(3)[np.argmin(np.abs(a))]
        u = np.cross(a, helper)
        u /= np.linalg.norm(u)
        frame[free[0]] = u
        frame[free[1]] = np.cross(a, u)
    elif len(free) == 1:
        n = np.cross(vecs[0], vecs[1])
        frame[free[0]] = n / np.linalg.norm(n)
    return frame
