"""hard_mixed_sum: the mixed edge when every sample drew one op (only the drawn outputs).

Schema: ``csrc/hard_mixed_sum.cpp``; CPU kernel: ``csrc/cpu/hard_mixed_sum_cpu.cpp``; CUDA kernel:
``csrc/cuda/hard_mixed_sum_kernel.cu``; reference: :func:`dartscc_fast.reference.hard_mixed_sum`."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from dartscc_fast.ops._autograd import autograd_spec, call_op, check_same_device
from dartscc_fast.ops.kernel_spec import hard_out_shape as _hard_out_shape

_ops = torch.ops.dartscc_fast


def hard_groups(index: Tensor, k: int) -> List[Tensor]:
    """For each op m, the (sorted) samples whose hard weights picked m."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=k).tolist()
    return list(torch.split(order, counts))


def hard_mixed_sum(outputs: Sequence[Tensor], weights: Tensor, index: Tensor) -> Tensor:
    """Scatter the sampled ops' outputs back into one batch (the hard, GDAS path).

    ``y[n] = weights[n, index[n]] * outputs[index[n]][pos(n)] + sum_{m != index[n]} weights[n, m]``
    where ``outputs[m]`` holds, in sample order, only the samples that drew op m
    (:func:`hard_groups`), so each op runs on its own samples only. The weights
    of the ops not drawn are zero in value but still get the straight-through
    gradient ``sum(g[n])``.

    Args:
        outputs: k tensors ``[count_m, ...]`` (empty for ops nobody drew).
        weights: hard Gumbel weights ``[k]`` or ``[N, k]``.
        index: ``[N]`` int64, the op each sample drew.
    """
    return call_op(_HARD_MIXED_SUM, list(outputs), weights, index)


@torch.library.register_fake("dartscc_fast::hard_mixed_sum")
def _hard_mixed_sum_fake(outputs, weights, index):
    check_same_device("hard_mixed_sum", outputs, weights, index)
    o0 = outputs[0]
    return torch.empty(_hard_out_shape(outputs, index), dtype=o0.dtype, device=o0.device)


@torch.library.register_fake("dartscc_fast::hard_mixed_sum_backward")
def _hard_mixed_sum_backward_fake(grad, outputs, weights, index):
    return [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in outputs], \
        torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _hard_setup(ctx, inputs, output):
    outputs, weights, index = inputs
    ctx.save_for_backward(*outputs, weights, index)


def _hard_backward(ctx, grad):
    *outputs, weights, index = ctx.saved_tensors
    grad_outputs, grad_weights = _ops.hard_mixed_sum_backward.default(grad, outputs, weights, index)
    return list(grad_outputs), grad_weights, None


_HARD_MIXED_SUM = autograd_spec("hard_mixed_sum", _hard_setup, _hard_backward, lists=(0,))
