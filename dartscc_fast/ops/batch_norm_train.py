"""batch_norm_train: affine-free training BatchNorm with its batch statistics.

Schema: ``csrc/batch_norm_train.cpp``; CPU kernel: ``csrc/cpu/batch_norm_train_cpu.cpp``; no CUDA kernel (elsewhere the
reference runs, torch's own kernels); reference: :func:`dartscc_fast.reference.batch_norm_train`."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from dartscc_fast import (
    _extension,  # noqa: F401  (registers the ops)
    reference,
)
from dartscc_fast.ops._autograd import autograd_spec, call_op

_ops = torch.ops.dartscc_fast


def batch_norm_train(x: Tensor, eps: float = 1e-5) -> Tuple[Tensor, Tensor, Tensor]:
    """Affine-free BatchNorm in training mode, the BatchNorm of DARTS's search cells.

    ``y = (x - mean) / sqrt(var + eps)`` with each channel's batch mean and
    biased variance, as ``F.batch_norm(x, None, None, training=True, eps=eps)``.
    The statistics pass reads x's planes in memory order (torch's CPU kernel
    visits a channel's planes N*C*H*W apart).

    Args:
        x: ``[N, C, *]``, float32 or float64, on the CPU, more than one value
            per channel.
        eps: added to the variance.
    Returns:
        ``(y, mean, var)``: y contiguous; ``mean`` and ``var`` (biased) ``[C]``,
        for the caller's running-statistics update.

    The compiled kernel is CPU-only: on other devices this is
    :func:`dartscc_fast.reference.batch_norm_train` (torch's kernel).
    """
    if x.device.type != "cpu":
        return reference.batch_norm_train(x, eps)
    return call_op(_BATCH_NORM_TRAIN, x, float(eps))


@torch.library.register_fake("dartscc_fast::batch_norm_train")
def _batch_norm_train_fake(x, eps):
    torch._check(x.dim() >= 2)
    c = x.shape[1]
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty((c,)), x.new_empty((c,)))


@torch.library.register_fake("dartscc_fast::batch_norm_train_backward")
def _batch_norm_train_backward_fake(grad, x, mean, var, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _bn_setup(ctx, inputs, output):
    x, eps = inputs
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1], output[2])  # statistics: for running averages, not for gradients
    ctx.save_for_backward(x, output[1], output[2])


def _bn_backward(ctx, grad_y, grad_mean, grad_var):
    x, mean, var = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    return _ops.batch_norm_train_backward.default(grad_y, x, mean, var, ctx.eps), None


_BATCH_NORM_TRAIN = autograd_spec("batch_norm_train", _bn_setup, _bn_backward)
