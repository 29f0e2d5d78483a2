"""Keep the memory torch frees on the CPU in the process heap, for the next call to reuse.

Why: torch allocates each CPU tensor with ``malloc``. glibc's malloc serves a large request with a
fresh ``mmap`` and gives each one back at ``free``, and it returns the free top of its heap to the
operating system once that exceeds a threshold. A force call allocates and frees the same large
temporaries every time, so every call touches fresh pages, and the kernel faults and zeroes each
4 KiB page again: on 100-1,000 atoms that was 15-60 % of a call on our 2-core machine
(``docs/benchmarks.md``).

:func:`keep_freed_memory` sets two documented ``mallopt`` parameters: ``M_MMAP_MAX = 0`` (large
requests come from the heap too) and ``M_TRIM_THRESHOLD = -1`` (the heap is never trimmed). Freed
memory then stays with the process and is reused: its resident size stays at its peak, which is what
an MD run, a relaxation or training wants. It changes the whole process, so it is a call the
process's owner makes: the ``eqgnn-*`` commands make it; a library user asks for it with
``EqGNNCalculator(keep_freed_memory=True)`` or the training config's ``keep_freed_memory: true``,
or sets the same two parameters for any program through glibc's environment variables
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1``. It is never done at import. Where the C library is
not glibc (macOS, musl, Windows) it does nothing and returns False.

Example
-------
>>> from ase_eqgnn.heap import keep_freed_memory
>>> keep_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied = False


def _glibc() -> "ctypes.CDLL | None":
    """The process's C library if it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (see the module doc).

    Returns True once the parameters are set (on glibc; repeated calls are cheap), False where the C
    library is not glibc or refused them. To hand freed memory back later, call glibc's
    ``malloc_trim(0)`` (``ctypes.CDLL(None).malloc_trim(0)``).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on error.
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    return _applied


__all__ = ["keep_freed_memory"]
