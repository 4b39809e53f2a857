"""relu_dw_pw_conv: ReLU, depthwise and pointwise convolution in one op (the separable unit).

Schema: ``csrc/relu_dw_pw_conv.cpp``; CPU kernel: ``csrc/cpu/relu_dw_pw_conv_cpu.cpp``; no CUDA kernel (elsewhere the
reference runs, torch's own kernels); reference: :func:`dartscc_fast.reference.relu_dw_pw_conv`."""
from __future__ import annotations

import torch
from torch import Tensor

from dartscc_fast import (
    _extension,  # noqa: F401  (registers the ops)
    reference,
)
from dartscc_fast.ops._autograd import autograd_spec, call_op, check_same_device

_ops = torch.ops.dartscc_fast


def relu_dw_pw_conv(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int = 1, dilation: int = 1) -> Tensor:
    """``pointwise(depthwise(relu(x)))``: the unit DARTS's convolution candidates are made of.

    ``SepConv`` is two of them, each followed by BatchNorm; ``DilConv`` is one.
    The ReLU and depthwise outputs are never stored (the backward recomputes
    them per sample), so forward and backward each take one pass over x.

    Args:
        x: ``[N, C, H, W]``, float32 or float64, on the CPU.
        dw_weight: ``[C, 1, K, K]`` (odd K), the depthwise convolution, padding
            ``dilation * (K - 1) // 2``.
        pw_weight: ``[C_out, C, 1, 1]``, the pointwise convolution (no bias).
        stride, dilation: of the depthwise convolution.

    Returns:
        ``[N, C_out, (H - 1) // stride + 1, (W - 1) // stride + 1]``, contiguous.

    The compiled kernel is CPU-only: on other devices this is
    :func:`dartscc_fast.reference.relu_dw_pw_conv` (cuDNN's convolutions).
    """
    if x.device.type != "cpu":
        return reference.relu_dw_pw_conv(x, dw_weight, pw_weight, stride, dilation)
    return call_op(_RELU_DW_PW_CONV, x, dw_weight, pw_weight, stride, dilation)


def _dw_pw_out_shape(x, dw_weight, pw_weight, stride):
    torch._check(x.dim() == 4 and dw_weight.dim() == 4 and pw_weight.dim() == 4)
    torch._check(stride >= 1)
    n, _, h, w = x.shape
    return (n, pw_weight.shape[0], (h - 1) // stride + 1, (w - 1) // stride + 1)


@torch.library.register_fake("dartscc_fast::relu_dw_pw_conv")
def _relu_dw_pw_conv_fake(x, dw_weight, pw_weight, stride, dilation):
    check_same_device("relu_dw_pw_conv", x, dw_weight, pw_weight)
    return x.new_empty(_dw_pw_out_shape(x, dw_weight, pw_weight, stride))


@torch.library.register_fake("dartscc_fast::relu_dw_pw_conv_backward")
def _relu_dw_pw_conv_backward_fake(grad, x, dw_weight, pw_weight, stride, dilation):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(dw_weight),
            torch.empty_like(pw_weight))


def _dw_pw_setup(ctx, inputs, output):
    x, dw_weight, pw_weight, stride, dilation = inputs
    ctx.stride, ctx.dilation = stride, dilation
    ctx.save_for_backward(x, dw_weight, pw_weight)


def _dw_pw_backward(ctx, grad):
    x, dw_weight, pw_weight = ctx.saved_tensors
    gx, gdw, gpw = _ops.relu_dw_pw_conv_backward.default(grad, x, dw_weight, pw_weight, ctx.stride, ctx.dilation)
    return gx, gdw, gpw, None, None


_RELU_DW_PW_CONV = autograd_spec("relu_dw_pw_conv", _dw_pw_setup, _dw_pw_backward)
