"""The DARTS candidate operations, as quark0/darts defines them.

Module classes, constructor arguments and submodule names are those of
quark0/darts ``operations.py``, so DARTS checkpoints load unchanged. Every
primitive also has an *op type* (pool, identity, conv) for the latency
regulariser; 'none' has no type and no cost.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dartscc_fast.nn.batch_norm import batch_norm

#: The full DARTS search space, in quark0/darts order.
DARTS_PRIMITIVES: List[str] = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                               "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
#: The seeds' Fashion-MNIST space.
FMNIST_PRIMITIVES: List[str] = ["sep_conv_3x3", "max_pool_3x3", "skip_connect"]
#: Operation types, in the order of the complexity vector S.
OP_TYPES: List[str] = ["pool", "identity", "conv"]

_TYPE: Dict[str, Optional[str]] = {
    "none": None,
    "max_pool_3x3": "pool", "avg_pool_3x3": "pool",
    "skip_connect": "identity",
    "sep_conv_3x3": "conv", "sep_conv_5x5": "conv", "sep_conv_7x7": "conv",
    "dil_conv_3x3": "conv", "dil_conv_5x5": "conv", "conv_7x1_1x7": "conv",
}


def op_type(primitive: str) -> Optional[str]:
    """The op type ('pool', 'identity', 'conv') of a primitive; None for 'none'."""
    check_primitives([primitive])
    return _TYPE[primitive]


def check_primitives(primitives: Sequence[str]) -> List[str]:
    """Validate primitive names; raise ValueError naming the unknown one."""
    primitives = list(primitives)
    if not primitives:
        raise ValueError("primitives must name at least one operation")
    for p in primitives:
        if p not in OPS:
            raise ValueError(f"unknown primitive {p!r}; known primitives: {sorted(OPS)}")
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"primitives must not repeat a name, got {primitives}")
    return primitives


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    """skip_connect at stride 2. Needs even H and W, as in quark0/darts."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    @staticmethod
    def check_input(x):
        """Raise unless x's planes have even H and W (the two stride-2 halves must line up)."""
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"FactorizedReduce (skip_connect at stride 2) needs even H and W, got "
                             f"{tuple(x.shape[2:])}")

    def forward(self, x):
        self.check_input(x)
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _is_channels_last(x) -> bool:
    """A 4-d tensor laid out channels_last (and not also contiguous, as size-1 dimensions allow)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _ReluGrids(torch.autograd.Function):
    """``relu(x[:, :, ::2, ::2]), relu(x[:, :, 1::2, 1::2])``, with a backward that writes the input
    gradient once (autograd's would zero-fill a full-size tensor per slice and add them up)."""

    @staticmethod
    def forward(ctx, x):
        even, odd = x[:, :, ::2, ::2].relu(), x[:, :, 1::2, 1::2].relu()
        ctx.save_for_backward(even, odd)
        ctx.shape = x.shape
        ctx.format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return even, odd

    @staticmethod
    def backward(ctx, g_even, g_odd):
        even, odd = ctx.saved_tensors
        # zero-filled in one contiguous pass, then the two read grids written once each (filling the
        # other two grids through strided views took longer: 1.15 against 0.90 ms at N64 C32 28x28)
        gx = torch.empty(ctx.shape, dtype=even.dtype, device=even.device, memory_format=ctx.format).zero_()
        if g_even is not None:
            gx[:, :, ::2, ::2] = torch.ops.aten.threshold_backward(g_even, even, 0)
        if g_odd is not None:
            gx[:, :, 1::2, 1::2] = torch.ops.aten.threshold_backward(g_odd, odd, 0)
        return gx


_grid_scope = threading.local()


def open_grid_scope() -> None:
    """From here until :func:`close_grid_scope`, FactorizedReduce ops on the same tensor share its
    subsampled ReLU grids (:func:`factorized_reduce_subsampled`): computed once, and in the backward
    their gradients are summed on the grids before one scatter into the input's gradient.

    In a DARTS cell each state feeds one FactorizedReduce (skip_connect at stride 2) per reduction edge
    it starts; :func:`dartscc_fast.fuse_preprocessing` opens a scope around every cell's forward. A scope
    must not span a backward pass (the shared grids' graph is freed by it). Scopes nest.
    """
    stack = getattr(_grid_scope, "stack", None)
    if stack is None:
        stack = _grid_scope.stack = []
    stack.append({})


def close_grid_scope() -> None:
    """Close the innermost :func:`open_grid_scope` (a no-op when none is open)."""
    stack = getattr(_grid_scope, "stack", None)
    if stack:
        stack.pop()


def _scope_cache() -> Optional[dict]:
    """The innermost open grid scope's cache, or None."""
    stack = getattr(_grid_scope, "stack", None)
    return stack[-1] if stack else None


def _scoped(x: Tensor, tag, make):
    """``make()``, computed once per (tag, x and its version, grad mode) within the innermost open grid
    scope; computed anew outside a scope and for inference tensors (they have no version counter)."""
    cache = _scope_cache() if not x.is_inference() else None
    if cache is None:
        return make()
    key = (tag, id(x), x._version, torch.is_grad_enabled())
    if key in cache and cache[key][0] is x:
        return cache[key][1]
    value = make()
    cache[key] = (x, value)
    return value


def _relu_grids(x: Tensor):
    if torch.is_grad_enabled() and x.requires_grad:
        even, odd = _ReluGrids.apply(x)
    else:  # inference, and what torch.jit.trace / ONNX export record (no Python autograd.Function)
        even, odd = x[:, :, ::2, ::2].relu(), x[:, :, 1::2, 1::2].relu()
    return torch.cat([even, odd], 1) if _is_channels_last(x) else (even, odd)


def _fr_input(x: Tensor):
    """The convolutions' input of :func:`factorized_reduce_subsampled`: the ReLU'd grids of pixels (2i, 2j)
    and (2i+1, 2j+1), stacked on channels for channels_last x; shared within an open grid scope."""
    return _scoped(x, "grids", lambda: _relu_grids(x))


def factorized_reduce_subsampled(x, weight_1, weight_2, bn: nn.Module):
    """What :class:`FactorizedReduce` computes, on the two pixel grids it reads.

    quark0/darts applies ReLU to the whole input, then convolves two stride-2 views,
    the second (``x[:, :, 1:, 1:]``) made contiguous first. ReLU commutes with
    subsampling, so this takes pixels (2i, 2j) and (2i+1, 2j+1) first and does ReLU
    and the two 1x1 convolutions (at stride 1) on the quarter-size grids: the same
    function, a quarter of the ReLU, no full-size copy, and a backward that writes
    the input gradient in one pass. A channels_last input has its grids stacked and
    convolved at once (``groups=2``), which also saves the concatenation of the
    outputs; oneDNN is fastest that way in that layout. H and W must be even.
    """
    grids = _fr_input(x)
    if _is_channels_last(x):
        out = F.conv2d(grids, torch.cat([weight_1, weight_2], 0), groups=2)
    else:
        out = torch.cat([F.conv2d(grids[0], weight_1), F.conv2d(grids[1], weight_2)], 1)
    return batch_norm(bn, out)


class ReduceGroup:
    """The FactorizedReduces (skip_connect at stride 2) of the edges that read one cell state, run as one.

    Each member is a pair of 1x1 convolutions (conv_1 on the pixel grid (2i, 2j), conv_2 on
    (2i+1, 2j+1)); :func:`factorized_reduce_grouped` convolves each grid once with all the members'
    weights stacked on the output channels, instead of once per member. In the ``fmnist-paper``
    reduction cells (4 members per state), on the 2-core CPU at batch 64, forward+backward of the four
    convolutions of one grid took 4.5 instead of 7.2 ms (32 channels at 14x14) and 2.5 instead of 4.8 ms
    (64 channels at 7x7). :func:`dartscc_fast.fuse_preprocessing` builds the groups of a DARTS cell.
    """

    def __init__(self, convs: Sequence[Tuple[nn.Conv2d, nn.Conv2d]]):
        self.convs = list(convs)
        self.sizes = [c1.out_channels for c1, _ in self.convs]
        self.sizes_2 = [c2.out_channels for _, c2 in self.convs]

    def __len__(self) -> int:
        return len(self.convs)


def factorized_reduce_grouped(x: Tensor, group: ReduceGroup, i: int, bn: nn.Module) -> Tensor:
    """Member ``i`` of ``group`` on x: :func:`factorized_reduce_subsampled` with that member's
    weights, the same function. Within an open :func:`open_grid_scope` the group's convolutions run
    once per grid for all members (kept in the scope for the others, the outputs split by member, so
    the backward gathers the members' gradients in one concatenation); outside a scope, and for
    channels_last x, the member runs alone."""
    conv_1, conv_2 = group.convs[i]
    if _scope_cache() is None or x.is_inference() or _is_channels_last(x) or len(group) < 2:
        return factorized_reduce_subsampled(x, conv_1.weight, conv_2.weight, bn)

    def convolve():
        even, odd = _fr_input(x)
        return (F.conv2d(even, torch.cat([c1.weight for c1, _ in group.convs])).split(group.sizes, 1),
                F.conv2d(odd, torch.cat([c2.weight for _, c2 in group.convs])).split(group.sizes_2, 1))

    even_out, odd_out = _scoped(x, ("group", id(group)), convolve)
    return batch_norm(bn, torch.cat([even_out[i], odd_out[i]], 1))


class SubsampledFactorizedReduce(FactorizedReduce):
    """:class:`FactorizedReduce` through :func:`factorized_reduce_subsampled`: the same function,
    parameters and state_dict keys (so weights load both ways); on the 2-core CPU at batch 64,
    1.2-4.2x faster in inference (``bench/bench_factorized_reduce.py``) and about 2x forward+backward.
    The derived networks and the search's preprocessing use it."""

    def forward(self, x):
        self.check_input(x)
        return factorized_reduce_subsampled(x, self.conv_1.weight, self.conv_2.weight, self.bn)


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine)),
}


#: ops whose first step is ReLU on their input (and not on a subsampled view of it)
_RELU_FIRST = frozenset({"sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5",
                         "conv_7x1_1x7"})


def shared_part(primitive: str, stride: int) -> Optional[str]:
    """The name of the work a derived op can share with the other edges that leave the same node.

    A graph runtime that eliminates common subexpressions (the ONNX exporter and ONNX Runtime do) computes
    identical work on one tensor once: 'relu' for the ops that start with ReLU on their input, whichever they
    are; else the op at its stride (two max pools of one node are one pool; two factorized reduces share
    their subsampling and ReLU). Weighted layers differ from edge to edge, so only this part is shared.
    None for the ops that do no work ('none', skip_connect at stride 1)."""
    if primitive == "none" or (primitive == "skip_connect" and stride == 1):
        return None
    return "relu" if primitive in _RELU_FIRST else f"{primitive}/s{stride}"


def derived_op(primitive: str, C: int, stride: int) -> nn.Module:
    """A candidate op as a derived (discrete) network runs it: affine, as DARTS evaluates, with
    skip_connect at stride 2 as :class:`SubsampledFactorizedReduce` (the same function and keys)."""
    if primitive == "skip_connect" and stride != 1:
        return SubsampledFactorizedReduce(C, C, affine=True)
    return OPS[primitive](C, stride, True)


def search_candidate(primitive: str, C: int, stride: int) -> nn.Module:
    """A candidate op as DARTS builds it for search: affine=False, pools followed by BatchNorm."""
    op = OPS[primitive](C, stride, False)
    if "pool" in primitive:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op
