"""gumbel_softmax: seeded Gumbel-Softmax samples (soft, or hard with a straight-through gradient).

Schema: ``csrc/gumbel_softmax.cpp``; CPU kernel: ``csrc/cpu/gumbel_softmax_cpu.cpp``; CUDA kernel:
``csrc/cuda/gumbel_softmax_kernel.cu``; reference: :func:`dartscc_fast.reference.gumbel_softmax`."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from dartscc_fast.ops._autograd import autograd_spec, call_op

_ops = torch.ops.dartscc_fast


def _seed_tensor(generator: Optional[torch.Generator], seed: Union[int, Tensor, None]) -> Tensor:
    if seed is None:
        device = generator.device if generator is not None else "cpu"
        seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), generator=generator, device=device,
                             dtype=torch.int64)
        return seed.cpu()
    if isinstance(seed, Tensor):
        return seed.to(device="cpu", dtype=torch.int64).reshape(())
    return torch.tensor(int(seed) & (2 ** 64 - 1), dtype=torch.uint64).view(torch.int64) \
        if seed >= 2 ** 63 else torch.tensor(int(seed), dtype=torch.int64)


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False, *,
                   generator: Optional[torch.Generator] = None,
                   seed: Union[int, Tensor, None] = None, return_soft: bool = False):
    """Gumbel-Softmax over the last dimension, all edges in one kernel.

    ``softmax((logits + G) / tau)`` with Gumbel noise G from a counter-based
    Philox generator keyed by one 64-bit seed, so the CPU and CUDA kernels draw
    the same sample. The seed is drawn from ``generator`` (or the default
    generator) unless ``seed`` is given. With ``hard=True`` the result is the
    exact one-hot of the argmax and its gradient is the soft sample's
    (straight-through, as GDAS).

    Args:
        logits: ``[E, k]`` or ``[N, E, k]`` (any leading dimensions work).
        tau: the temperature, finite and > 0.
        return_soft: also return the soft sample.
    """
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"gumbel_softmax: tau must be a finite number > 0, got {tau!r}")
    y, soft = call_op(_GUMBEL_SOFTMAX, logits, _seed_tensor(generator, seed), float(tau), bool(hard))
    return (y, soft) if return_soft else y


@torch.library.register_fake("dartscc_fast::gumbel_softmax")
def _gumbel_softmax_fake(logits, seed, tau, hard):
    return torch.empty_like(logits, memory_format=torch.contiguous_format), \
        torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("dartscc_fast::gumbel_softmax_backward")
def _gumbel_softmax_backward_fake(grad, soft, tau):
    return torch.empty_like(soft, memory_format=torch.contiguous_format)


def _gumbel_setup(ctx, inputs, output):
    ctx.tau = inputs[2]
    ctx.save_for_backward(output[1])


def _gumbel_backward(ctx, grad_y, grad_soft):
    (soft,) = ctx.saved_tensors
    if grad_y is None:
        grad_y = grad_soft
    elif grad_soft is not None:
        grad_y = grad_y + grad_soft  # y is straight-through, so both share soft's Jacobian
    return _ops.gumbel_softmax_backward.default(grad_y, soft, ctx.tau), None, None, None


_GUMBEL_SOFTMAX = autograd_spec("gumbel_softmax", _gumbel_setup, _gumbel_backward)
