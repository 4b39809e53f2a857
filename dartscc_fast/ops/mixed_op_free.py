"""mixed_op_free: the parameter-free candidates of a mixed op (pools, skip, zero) in one kernel.

Schema: ``csrc/mixed_op_free.cpp``; CPU kernel: ``csrc/cpu/mixed_op_free_cpu.cpp``; CUDA kernel:
``csrc/cuda/mixed_op_free_kernel.cu``; reference: :func:`dartscc_fast.reference.mixed_op_free`."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dartscc_fast.ops._autograd import autograd_spec, call_op, check_same_device
from dartscc_fast.ops.kernel_spec import PRIM_CODES
from dartscc_fast.ops.kernel_spec import stats_dtype as _stats_dtype

_ops = torch.ops.dartscc_fast


def prim_codes(prims: Sequence[Union[str, int]]) -> List[int]:
    """Map slot names ('param', 'none', 'identity', 'max_pool', 'avg_pool') to codes."""
    codes = []
    for p in prims:
        if isinstance(p, str):
            if p not in PRIM_CODES:
                raise ValueError(f"mixed_op_free: unknown slot {p!r}; expected one of {sorted(PRIM_CODES)}")
            codes.append(PRIM_CODES[p])
        else:
            codes.append(int(p))
    return codes


def mixed_op_free(x: Tensor, param_outputs: Sequence[Tensor], weights: Tensor,
                  prims: Sequence[Union[str, int]], stride: int = 1, eps: float = 1e-5,
                  bn_stats: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """A DARTS mixed op whose parameter-free candidates are computed on the fly.

    Slot m of ``prims`` says what candidate m is: ``'param'`` (its output is the
    next tensor of ``param_outputs``), ``'none'`` (zero), ``'identity'``
    (stride 1 only), ``'max_pool'`` / ``'avg_pool'`` (3x3, padding 1,
    ``count_include_pad=False``, then ``BatchNorm2d(C, affine=False)``). Pool
    outputs are never stored: forward and backward recompute them from ``x``.

    Args:
        x: the edge input ``[N, C, H, W]``.
        param_outputs: the parametric candidates' outputs ``[N, C, Ho, Wo]``.
        weights: ``[k]`` or ``[N, k]``.
        stride: 1 or 2.
        eps: the pools' BatchNorm eps.
        bn_stats: ``[P, 2, C]`` running (mean, var) of the P pool slots, to
            normalise with (BatchNorm in eval mode); None normalises with the
            batch statistics (training mode).
    Returns:
        ``(y, stats)``: the mixed output and the ``[P, 2, C]`` (mean, biased
        var) used, from which a caller updates running statistics.
    """
    return call_op(_MIXED_OP_FREE, x, list(param_outputs), weights, prim_codes(prims), int(stride),
                                      float(eps), bn_stats)


def _free_out_hw(x, stride):
    return (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1


@torch.library.register_fake("dartscc_fast::mixed_op_free")
def _mixed_op_free_fake(x, param_outputs, weights, prims, stride, eps, bn_stats):
    check_same_device("mixed_op_free", x, param_outputs, weights, bn_stats)
    ho, wo = _free_out_hw(x, stride)
    n_pool = sum(1 for p in prims if p in (PRIM_CODES["max_pool"], PRIM_CODES["avg_pool"]))
    mf = _memory_format(x)
    y = torch.empty((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype, device=x.device).contiguous(
        memory_format=mf)
    stats = torch.empty((n_pool, 2, x.shape[1]), dtype=_stats_dtype(x.dtype), device=x.device)
    return y, stats


def _memory_format(x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("dartscc_fast::mixed_op_free_backward")
def _mixed_op_free_backward_fake(grad, x, param_outputs, weights, prims, stride, eps, stats, stats_fixed):
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=_memory_format(x))
    gp = [torch.empty(p.shape, dtype=p.dtype, device=p.device).contiguous(memory_format=_memory_format(p))
          for p in param_outputs]
    return gx, gp, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _free_setup(ctx, inputs, output):
    x, param_outputs, weights, prims, stride, eps, bn_stats = inputs
    ctx.prims, ctx.stride, ctx.eps = prims, stride, eps
    ctx.stats_fixed = bn_stats is not None
    ctx.n_param = len(param_outputs)
    ctx.save_for_backward(x, weights, output[1], *param_outputs)


def _free_backward(ctx, grad_y, grad_stats):
    x, weights, stats, *param_outputs = ctx.saved_tensors
    if grad_y is None:
        grad_y = x.new_zeros((x.shape[0], x.shape[1]) + _free_out_hw(x, ctx.stride))
    gx, gp, gw = _ops.mixed_op_free_backward.default(grad_y, x, param_outputs, weights, ctx.prims,
                                                     ctx.stride, ctx.eps, stats, ctx.stats_fixed)
    return gx, list(gp), gw, None, None, None, None


_MIXED_OP_FREE = autograd_spec("mixed_op_free", _free_setup, _free_backward, lists=(1,))
