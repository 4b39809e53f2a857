"""Typed wrapper of the compiled latency regulariser, with its fake kernel and autograd.

Schema in ``csrc/latency_reg.cpp``, CPU kernel in ``csrc/cpu/latency_reg_cpu.cpp``,
CUDA kernel in ``csrc/cuda/latency_reg_kernel.cu``, pure-PyTorch reference
:func:`dartscc_fast.reference.latency_reg`.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import Tensor

from dartscc_fast import _extension  # noqa: F401  (registers the ops)
from dartscc_fast.ops import cuda_gate

_ops = torch.ops.dartscc_fast

__all__ = ["latency_reg", "type_index_list"]


def type_index_list(type_index: Union[Sequence[int], Tensor]) -> List[int]:
    """The op type of each candidate as a list of ints (-1 for 'none'), from a list or a tensor."""
    if isinstance(type_index, Tensor):
        return [int(t) for t in type_index.tolist()]
    return [int(t) for t in type_index]


def latency_reg(w: Tensor, L: Tensor, S: Tensor, type_index: Union[Sequence[int], Tensor]) -> Tensor:
    """``Lat_S = sum_e sum_m S[type(m)] * L[e, m] * w[e, m]`` in one fused reduction.

    Args:
        w: architecture weights (Gumbel-Softmax samples) ``[E, k]``, or ``[N, E, k]`` per sample.
        L: the latency of each candidate on each edge ``[E, k]``, in w's dtype and device
            (:meth:`dartscc_fast.latency.LatencyTable.supernet_latency`, normalised).
        S: the complexity vector ``[T]`` (pool, identity, conv), or ``[N, T]`` per sample.
        type_index: the type of each candidate, an index into S or -1 ('none': no cost);
            ``SearchSpace.type_index()``. A list of ints is best under ``torch.compile``.
    Returns:
        A scalar, or ``[N]`` (one value per sample) when w or S is per sample.
        Gradients flow to w, S and L.
    """
    args = (w, L, S, type_index_list(type_index))
    torch_path = cuda_gate.torch_path_for(_ops.latency_reg.default, args)  # a CUDA kernel not (yet) proven here
    return torch_path(*args) if torch_path is not None else _ops.latency_reg.default(*args)


def _out_shape(w, S):
    if w.dim() == 3:
        return (w.shape[0],)
    if S.dim() == 2:
        return (S.shape[0],)
    return ()


@torch.library.register_fake("dartscc_fast::latency_reg")
def _latency_reg_fake(w, L, S, type_index):
    torch._check(w.dim() in (2, 3))
    torch._check(L.shape == w.shape[-2:])
    torch._check(len(type_index) == w.shape[-1])
    return torch.empty(_out_shape(w, S), dtype=w.dtype, device=w.device)


@torch.library.register_fake("dartscc_fast::latency_reg_backward")
def _latency_reg_backward_fake(grad, w, L, S, type_index):
    return torch.empty_like(w, memory_format=torch.contiguous_format), \
        torch.empty_like(L, memory_format=torch.contiguous_format), \
        torch.empty_like(S, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    w, L, S, type_index = inputs
    ctx.type_index = type_index
    ctx.save_for_backward(w, L, S)


def _backward(ctx, grad):
    w, L, S = ctx.saved_tensors
    gw, gL, gS = _ops.latency_reg_backward.default(grad, w, L, S, ctx.type_index)
    return gw, gL, gS, None


torch.library.register_autograd("dartscc_fast::latency_reg", _backward, setup_context=_setup)
