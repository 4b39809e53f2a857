"""node_sum: the sum of a cell node's incoming edges.

Schema: ``csrc/node_sum.cpp``; CPU kernel: ``csrc/cpu/node_sum_cpu.cpp``; no CUDA kernel (elsewhere the
reference runs, torch's own kernels); reference: :func:`dartscc_fast.reference.node_sum`."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dartscc_fast import (
    _extension,  # noqa: F401  (registers the ops)
    reference,
)
from dartscc_fast.ops._autograd import autograd_spec, call_op, check_same_device

_ops = torch.ops.dartscc_fast


def node_sum(xs: Sequence[Tensor]) -> Tensor:
    """``xs[0] + xs[1] + ... + xs[k-1]``, added in that order, in one pass over memory.

    A DARTS cell node sums its incoming edges' outputs; Python's ``sum`` does
    that as k additions, each reading and writing a full tensor (the first adds
    the outputs to 0). The same values, each input read once and the output
    written once.

    Args:
        xs: one or more tensors of one shape and dtype on one device.
    Returns:
        A new contiguous tensor (also for one input). Every input's gradient is
        the output's gradient.

    The compiled kernel is for contiguous float32/float64 CPU tensors; other
    inputs get :func:`dartscc_fast.reference.node_sum`.
    """
    xs = list(xs)
    if not xs:
        raise ValueError("node_sum: xs must hold at least one tensor")
    x0 = xs[0]
    if x0.device.type != "cpu" or x0.dtype not in (torch.float32, torch.float64) \
            or not all(x.is_contiguous() for x in xs):
        return reference.node_sum(xs)
    return call_op(_NODE_SUM, xs)


@torch.library.register_fake("dartscc_fast::node_sum")
def _node_sum_fake(xs):
    torch._check(len(xs) >= 1)
    check_same_device("node_sum", xs)
    return torch.empty(xs[0].shape, dtype=xs[0].dtype, device=xs[0].device)


def _node_sum_setup(ctx, inputs, output):
    ctx.k = len(inputs[0])


def _node_sum_backward(ctx, grad):
    return [grad] * ctx.k,


_NODE_SUM = autograd_spec("node_sum", _node_sum_setup, _node_sum_backward, lists=(0,), differentiable=True)
