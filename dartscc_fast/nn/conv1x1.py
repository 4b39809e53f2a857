"""1x1 convolutions whose backward is two matrix products (NCHW, on the CPU).

A 1x1 convolution of an NCHW tensor is, per sample, ``W [Co, Ci] @ x_n [Ci, HW]``.
oneDNN runs its forward well, but its backward for NCHW tensors converts
layouts and, at some shapes of the search (the reduction cells' 64 -> 32
channel 28x28 preprocessing most), is several times slower than ``W^T @ g_n``
as one batched product, and its weight gradients slower than
``sum_n g_n @ x_n^T``; the benchmark is ``bench/bench_conv1x1.py``, its
figures in ``docs/benchmarks.md``.

:class:`Conv1x1` is an ``nn.Conv2d`` (same parameters and state_dict) whose
forward keeps ``F.conv2d`` and whose backward is those products, where it
applies: a 1x1 kernel, stride 1, no padding, dilation 1, one group, no bias,
an NCHW-contiguous float32/float64 CPU input of at least ``TUNING.conv1x1_min_pixels`` pixels
per plane, in training (gradients enabled). Elsewhere it is ``nn.Conv2d``.
The backward is not itself differentiable (no double backward): DARTS's
first-order search does not need one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dartscc_fast.nn.tuning import TUNING

__all__ = ["Conv1x1", "conv1x1", "use_conv1x1"]


class _Conv1x1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        n, ci, h, wd = x.shape
        co = w.shape[0]
        g = g.contiguous().view(n, co, h * wd)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(w.view(co, ci).t().expand(n, ci, co), g).view(n, ci, h, wd)
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(g, x.view(n, ci, h * wd).transpose(1, 2)).sum(0).view(co, ci, 1, 1)
        return gx, gw


def _eligible(conv: nn.Conv2d) -> bool:
    """The convolution is a plain product over channels: 1x1, stride 1, no padding, dilation 1, one
    group, no bias."""
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros")


def _applies(conv: nn.Conv2d, x: Tensor) -> bool:
    return (x.dim() == 4 and x.shape[2] * x.shape[3] >= TUNING.conv1x1_min_pixels and _eligible(conv)
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.dtype == conv.weight.dtype and x.is_contiguous() and x.numel() > 0
            and torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))


def conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``F.conv2d(x, weight)`` for a ``[Co, Ci, 1, 1]`` weight, with the matrix-product backward
    (``x`` NCHW-contiguous; no bias)."""
    if weight.dim() != 4 or weight.shape[2:] != (1, 1) or x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv1x1: x [N, Ci, H, W] and weight [Co, Ci, 1, 1], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    return _Conv1x1.apply(x.contiguous(), weight)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d`` whose 1x1, stride-1, bias-free training forward on the CPU uses :func:`conv1x1`."""

    def forward(self, x: Tensor) -> Tensor:
        if _applies(self, x):
            return _Conv1x1.apply(x, self.weight)
        return super().forward(x)


def use_conv1x1(model: nn.Module) -> int:
    """Make every 1x1, stride-1, bias-free ``nn.Conv2d`` of `model` a :class:`Conv1x1`, in place
    (only the class changes). Returns how many modules changed."""
    changed = 0
    for mod in model.modules():
        if type(mod) is nn.Conv2d and _eligible(mod):
            mod.__class__ = Conv1x1
            changed += 1
    return changed
