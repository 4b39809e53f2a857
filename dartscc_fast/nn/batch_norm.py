"""BatchNorm through :func:`dartscc_fast.ops.batch_norm_train` where it applies.

DARTS's search cells normalise every candidate's output with an affine-free
``nn.BatchNorm2d`` in training mode. On the CPU, :func:`batch_norm` and
:class:`FastBatchNorm2d` compute that with the package's kernel (whose
statistics pass streams the input in memory order) and update the module's
running statistics exactly as ``nn.BatchNorm2d`` does; anything else (eval mode,
affine modules, other devices and dtypes, non-contiguous or empty input, planes
under ``TUNING.batch_norm_min_pixels``) goes to ``nn.BatchNorm2d.forward``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dartscc_fast import ops
from dartscc_fast.nn.tuning import TUNING

__all__ = ["FastBatchNorm2d", "batch_norm", "update_running_stats", "use_fast_batch_norm"]


@torch.no_grad()
def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """Fold a batch's (mean, biased var) over ``count`` values per channel into bn's running statistics,
    as ``nn.BatchNorm2d`` does in training mode (unbiased variance; ``momentum=None`` is a cumulative
    average). Does nothing when bn is in eval mode or does not track running statistics."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.lerp_(mean.to(bn.running_mean), momentum)
    bn.running_var.lerp_((var * (count / max(count - 1, 1))).to(bn.running_var), momentum)


def _applies(bn: nn.Module, x: Tensor) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and bn.training and not bn.affine and x.dim() == 4
            and x.shape[2] * x.shape[3] >= TUNING.batch_norm_min_pixels
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.numel() > 0
            and x.is_contiguous())


def _fast(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    y, mean, var = ops.batch_norm_train(x, bn.eps)
    update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return y


def batch_norm(bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(x)``; for an affine-free ``nn.BatchNorm2d`` in training mode on a contiguous CPU float
    tensor, through :func:`dartscc_fast.ops.batch_norm_train` (forward hooks of bn do not run then)."""
    return _fast(bn, x) if _applies(bn, x) and type(bn) is nn.BatchNorm2d else bn(x)


class FastBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode forward, affine-free on the CPU, runs
    :func:`dartscc_fast.ops.batch_norm_train`. Same parameters, buffers and state_dict keys;
    :func:`use_fast_batch_norm` converts the modules of an existing model in place."""

    def forward(self, x: Tensor) -> Tensor:
        if _applies(self, x):
            return _fast(self, x)
        return super().forward(x)


def use_fast_batch_norm(model: nn.Module) -> int:
    """Make every affine-free ``nn.BatchNorm2d`` of `model` a :class:`FastBatchNorm2d`, in place
    (only the class changes). Returns how many modules changed."""
    changed = 0
    for mod in model.modules():
        if type(mod) is nn.BatchNorm2d and not mod.affine:
            mod.__class__ = FastBatchNorm2d
            changed += 1
    return changed
