"""Row gathers and scatter-sums that stay ATen kernels inside ``torch.compile``.

=====================  =================================================================
function               maths
=====================  =================================================================
:func:`gather_rows`    out[e] = x[index[e]]                         [E, ...] (index_select)
:func:`scatter_rows`   out[k] = Σ_{e : index[e] = k} src[e]         [n, ...] (index_add)
=====================  =================================================================

Eagerly these are ``index_select`` and ``index_add``. While ``torch.compile`` traces them they are
custom operators, which Inductor calls as they are instead of generating code: on the CPU it turns a
scatter-add (the gradient of every gather) into a loop of atomic adds, slow enough to make a compiled
PaiNN call slower than the eager one (``docs/benchmarks.md``).
The custom operators carry their own gradients (each is the other's), so compiled first
derivatives work; eager code, including training's second derivatives, never sees them.

Example
-------
>>> import torch
>>> x = torch.arange(6.0).view(3, 2)
>>> index = torch.tensor([2, 0, 2])
>>> gather_rows(x, index).tolist(), scatter_rows(gather_rows(x, index), index, 3).tolist()
([[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]], [[0.0, 1.0], [0.0, 0.0], [8.0, 10.0]])
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("ase_eqgnn::gather_rows", mutates_args=())
def _gather_rows_op(x: Tensor, index: Tensor) -> Tensor:
    return x.index_select(0, index)


def _scatter_add(src: Tensor, index: Tensor, n: int) -> Tensor:
    return src.new_zeros((n,) + tuple(src.shape[1:])).index_add_(0, index, src)


@torch.library.custom_op("ase_eqgnn::scatter_rows", mutates_args=())
def _scatter_rows_op(src: Tensor, index: Tensor, n: int) -> Tensor:
    return _scatter_add(src, index, n)


@_gather_rows_op.register_fake
def _(x, index):
    return x.new_empty((index.shape[0],) + tuple(x.shape[1:]))


@_scatter_rows_op.register_fake
def _(src, index, n):
    return src.new_empty((n,) + tuple(src.shape[1:]))


def _gather_setup(ctx, inputs, output):
    x, index = inputs
    ctx.save_for_backward(index)
    ctx.n = x.shape[0]


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return _scatter_rows_op(grad, index, ctx.n), None


def _scatter_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _scatter_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return _gather_rows_op(grad, index), None, None


_gather_rows_op.register_autograd(_gather_backward, setup_context=_gather_setup)
_scatter_rows_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(0, index)``; a custom operator while ``torch.compile`` traces it."""
    if torch.compiler.is_compiling():
        return _gather_rows_op(x, index)
    return x.index_select(0, index)


def scatter_rows(src: Tensor, index: Tensor, n: int) -> Tensor:
    """Rows of ``src`` [E, ...] summed into ``n`` rows by ``index`` [E]: [n, ...] (differentiable)."""
    if torch.compiler.is_compiling():
        return _scatter_rows_op(src, index, n)
    return _scatter_add(src, index, n)


__all__ = ["gather_rows", "scatter_rows"]
