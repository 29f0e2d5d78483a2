"""The floating-point precisions the package computes in, by name: one table and its resolver.

=============  =================  ======================================================
name           torch dtype        for
=============  =================  ======================================================
``float32``    ``torch.float32``  MD, screening, training (half the memory traffic)
``float64``    ``torch.float64``  tight relaxations, finite differences, reference values
=============  =================  ======================================================

>>> resolve_dtype("float64")
torch.float64
>>> dtype_name(torch.float32)
'float32'
"""

from __future__ import annotations

from typing import Dict, Union

import torch

#: The supported precisions by name.
DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or the torch dtype itself) -> the torch dtype; anything else is a
    ``ValueError`` that lists the choices."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(repr(k) for k in DTYPES)}, got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of a supported torch dtype (``torch.float32`` -> ``"float32"``)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype must be one of {', '.join(repr(k) for k in DTYPES)}, got {dtype!r}")


__all__ = ["DTYPES", "resolve_dtype", "dtype_name"]
