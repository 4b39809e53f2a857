"""mixed_sum: the DARTS mixed edge, sum_m w_m o_m (per batch or per sample weights).

Schema: ``csrc/mixed_sum.cpp``; CPU kernel: ``csrc/cpu/mixed_sum_cpu.cpp``; CUDA kernel:
``csrc/cuda/mixed_sum_kernel.cu``; reference: :func:`dartscc_fast.reference.mixed_sum`."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from dartscc_fast.ops._autograd import autograd_spec, call_op, check_same_device
from dartscc_fast.ops.kernel_spec import MAX_OPS

_ops = torch.ops.dartscc_fast


def mixed_sum(outputs: Union[Sequence[Tensor], Tensor], weights: Tensor) -> Tensor:
    """``sum_m weights[..., m] * outputs[m]`` in one pass over memory.

    Args:
        outputs: the k candidate outputs, a list of tensors of one shape or a
            stacked tensor ``[k, N, ...]``.
        weights: ``[k]`` (one weight per op) or ``[N, k]`` (per sample, as
            DARTS-CC draws Gumbel weights per example).
    Returns:
        A tensor of the outputs' shape, in their memory format.
    """
    if isinstance(outputs, Tensor):
        if outputs.dim() < 1:
            raise ValueError("mixed_sum: a stacked outputs tensor must have shape [k, ...], got a scalar")
        outputs = outputs.unbind(0)
    return call_op(_MIXED_SUM, list(outputs), weights)


def is_non_overlapping_and_dense(t: Tensor) -> bool:
    """Whether t's elements fill exactly t.numel() slots of memory, in any order."""
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _layout_like(outputs: Sequence[Tensor], per_sample: bool) -> bool:
    """Mirror of ``same_layout`` in csrc/checks.cpp: may the kernels keep the outputs' strides?"""
    o0 = outputs[0]
    ok = is_non_overlapping_and_dense(o0)
    if ok and per_sample and o0.dim() >= 1 and o0.shape[0] > 1:
        ok = o0.stride(0) * o0.shape[0] == o0.numel()
    return ok and all(o.stride() == o0.stride() for o in outputs[1:])


def _empty_out(outputs: Sequence[Tensor], per_sample: bool) -> Tensor:
    o0 = outputs[0]
    if _layout_like(outputs, per_sample):
        return torch.empty_strided(o0.shape, o0.stride(), dtype=o0.dtype, device=o0.device)
    return torch.empty(o0.shape, dtype=o0.dtype, device=o0.device)


@torch.library.register_fake("dartscc_fast::mixed_sum")
def _mixed_sum_fake(outputs, weights):
    check_same_device("mixed_sum", outputs, weights)
    torch._check(len(outputs) >= 1 and len(outputs) <= MAX_OPS)
    torch._check(weights.shape[-1] == len(outputs))
    return _empty_out(outputs, weights.dim() == 2)


@torch.library.register_fake("dartscc_fast::mixed_sum_backward")
def _mixed_sum_backward_fake(grad, outputs, weights):
    per_sample = weights.dim() == 2
    ok = _layout_like(outputs, per_sample) and grad.stride() == outputs[0].stride()
    if ok:
        grads = [torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=o.device) for o in outputs]
    else:
        grads = [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in outputs]
    return grads, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _mixed_sum_setup(ctx, inputs, output):
    outputs, weights = inputs
    ctx.k = len(outputs)
    ctx.save_for_backward(*outputs, weights)


def _mixed_sum_backward(ctx, grad):
    *outputs, weights = ctx.saved_tensors
    grad_outputs, grad_weights = _ops.mixed_sum_backward.default(grad, outputs, weights)
    return list(grad_outputs), grad_weights


_MIXED_SUM = autograd_spec("mixed_sum", _mixed_sum_setup, _mixed_sum_backward, lists=(0,))
